#!/bin/busybox sh
# /init of the test guest (tests/vm/run.sh builds the initramfs around it).
#
# Runs as PID 1 under busybox sh. It mounts the pseudo file systems, loads the kernel
# modules listed in /modules/order (dependencies first), gives the virtio-serial port its
# udev name, runs the in-guest AF_VSOCK checks, then starts one agent per host transport:
#   tuppence serve --virtio              (the host talks to it over QEMU's unix socket)
#   tuppence serve --serial /dev/ttyS1   (the second 8250 port, also a host unix socket)
# Every line the host waits for starts with "TUPPENCE-VM:" on the console (ttyS0); the
# in-guest vsock checks print "TUPPENCE-VSOCK: PASS|FAIL NAME detail".
# When both agents have exited (the host sends quit) the guest powers off.

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
exec </dev/null >/dev/console 2>&1

say() { echo "TUPPENCE-VM: $*"; }
up() { cut -d' ' -f1 /proc/uptime; }

say "init kernel=$(uname -r) uptime=$(up)"
hostname tuppence-guest
chown -R 1000:1000 /home/tp
chmod 1777 /tmp
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

# --- modules ---
while read -r m; do
  [ -n "$m" ] || continue
  if ! out=$(insmod "/modules/$m" 2>&1); then
    case "$out" in *"File exists"*) ;; *) say "insmod $m failed: $out" ;; esac
  fi
done </modules/order
say "modules loaded uptime=$(up)"

# --- the virtio-serial port's name (no udev here) ---
port=""
i=0
while [ $i -lt 100 ]; do
  for n in /sys/class/virtio-ports/*/name; do
    [ -r "$n" ] || continue
    if [ "$(cat "$n")" = org.opensuse.twopence.0 ]; then
      port=$(basename "$(dirname "$n")")
    fi
  done
  [ -n "$port" ] && [ -e "/dev/$port" ] && break
  i=$((i + 1))
  sleep 0.1
done
if [ -n "$port" ]; then
  mkdir -p /dev/virtio-ports
  ln -sf "/dev/$port" /dev/virtio-ports/org.opensuse.twopence.0
  say "virtio port /dev/$port -> /dev/virtio-ports/org.opensuse.twopence.0"
else
  say "virtio port org.opensuse.twopence.0 not found; /sys/class/virtio-ports: $(ls /sys/class/virtio-ports 2>&1)"
fi

# Waits until FILE contains "tuppence serve: ready" (at most $2 tenths of a second).
wait_ready() {
  j=0
  while [ $j -lt "$2" ]; do
    grep -q 'tuppence serve: ready' "$1" 2>/dev/null && return 0
    j=$((j + 1))
    sleep 0.1
  done
  return 1
}

# --- AF_VSOCK, entirely inside the guest (the host has no vhost-vsock) ---
vsock_checks() {
  vp=5000
  t="vsock:1:$vp"
  vpass() { echo "TUPPENCE-VSOCK: PASS $*"; }
  vfail() { echo "TUPPENCE-VSOCK: FAIL $*"; }
  if ! grep -q '^vsock_loopback ' /proc/modules; then
    echo "TUPPENCE-VSOCK: SKIPPED vsock_loopback is not loaded: $(grep vsock /proc/modules | cut -d' ' -f1 | tr '\n' ' ')"
    return
  fi
  TUPPENCE_LOG=info tuppence serve --vsock $vp >/tmp/vsock-serve.log 2>&1 &
  vpid=$!
  if ! wait_ready /tmp/vsock-serve.log 100; then
    vfail ready "no ready line: $(tr '\n' ' ' </tmp/vsock-serve.log)"
    kill $vpid 2>/dev/null
    return
  fi
  vpass ready "$(grep 'tuppence serve: ready' /tmp/vsock-serve.log)"

  out=$(tuppence run -t "$t" -- echo ok 2>&1); rc=$?
  if [ $rc = 0 ] && [ "$out" = ok ]; then vpass echo "rc=$rc out=$out"; else vfail echo "rc=$rc out=$out"; fi

  tuppence run -t "$t" -- 'exit 3' >/dev/null 2>&1; rc=$?
  if [ $rc = 3 ]; then vpass exit-code "rc=$rc"; else vfail exit-code "rc=$rc (want 3)"; fi

  out=$(tuppence run -t "$t" -u tp -- id 2>&1); rc=$?
  case "$out" in
    "uid=1000(tp) gid=1000(tp)"*) vpass user-tp "$out" ;;
    *) vfail user-tp "rc=$rc out=$out" ;;
  esac

  # 1 MiB both ways through vsock, byte-exact.
  head -c 1048576 /dev/urandom >/tmp/v-src
  want=$(sha256sum </tmp/v-src | cut -d' ' -f1)
  tuppence inject -t "$t" /tmp/v-src /tmp/v-inj 2>/tmp/v-err; rc1=$?
  tuppence extract -t "$t" /tmp/v-inj /tmp/v-ext 2>>/tmp/v-err; rc2=$?
  got=$(sha256sum </tmp/v-ext 2>/dev/null | cut -d' ' -f1)
  if [ $rc1 = 0 ] && [ $rc2 = 0 ] && [ "$got" = "$want" ]; then
    vpass transfer-1MiB "sha256=$got"
  else
    vfail transfer-1MiB "inject=$rc1 extract=$rc2 want=$want got=$got $(tr '\n' ' ' </tmp/v-err)"
  fi

  # Two clients at once, and `tuppence interrupt` from a second client by process group.
  tuppence run -t "$t" -- 'echo $$ >/tmp/v-pg; exec sleep 100' >/dev/null 2>&1 &
  rpid=$!
  j=0
  while [ ! -s /tmp/v-pg ] && [ $j -lt 100 ]; do sleep 0.1; j=$((j + 1)); done
  pg=$(cat /tmp/v-pg 2>/dev/null)
  tuppence interrupt -t "$t" -s INT "$pg" >/tmp/v-int 2>&1; irc=$?
  j=0
  while kill -0 $rpid 2>/dev/null && [ $j -lt 100 ]; do sleep 0.1; j=$((j + 1)); done
  if kill -0 $rpid 2>/dev/null; then
    kill -9 $rpid
    vfail interrupt "pgid=$pg interrupt rc=$irc: the run did not end within 10 s"
  else
    wait $rpid; rc=$?
    if [ $irc = 0 ] && [ $rc = 130 ]; then vpass interrupt "pgid=$pg run rc=$rc"; else vfail interrupt "pgid=$pg interrupt rc=$irc run rc=$rc $(tr '\n' ' ' </tmp/v-int)"; fi
  fi

  tuppence quit -t "$t" >/dev/null 2>&1
  j=0
  while kill -0 $vpid 2>/dev/null && [ $j -lt 50 ]; do sleep 0.1; j=$((j + 1)); done
  if kill -0 $vpid 2>/dev/null; then
    vfail quit "the vsock agent still runs 5 s after quit"
    kill $vpid
  else
    vpass quit "agent exited"
  fi
}
say "vsock checks start uptime=$(up)"
vsock_checks
say "vsock checks done uptime=$(up)"

# --- the agents the host drives ---
# Each logs to its own file (two agents writing to the console at once interleave their
# ready lines); a tail relays every line to the console with the agent's name in front.
# They log at warn by default; their audit lines (info) are useful in the console log.
# start_agent NAME ARGS...: starts it, waits for its ready line, prints that line.
start_agent() {
  name=$1
  shift
  : >"/tmp/$name-serve.log"
  TUPPENCE_LOG=info tuppence serve "$@" 2>>"/tmp/$name-serve.log" &
  pid=$!
  # (a shell loop, not sed: busybox sed buffers its output, which delayed lines by seconds;
  # tail -f itself checks once a second, and "-s 0.2" made it much slower under TCG)
  tail -f "/tmp/$name-serve.log" | while IFS= read -r line; do echo "[$name] $line"; done &
  if wait_ready "/tmp/$name-serve.log" 100; then
    say "$name agent pid=$pid $(grep -m1 'tuppence serve: ready' "/tmp/$name-serve.log")"
  else
    say "$name agent pid=$pid: no ready line within 10 s"
  fi
}
start_agent virtio --virtio
virtio_pid=$pid
# A tty has no hang-up: the port keepalive is how the serial agent notices a vanished host
# when no new client comes (a new client's hello ends the old session anyway).
# (10 s: the link's minimum; tuppence serve refuses a smaller value)
start_agent serial --serial /dev/ttyS1 --port-keepalive 10
serial_pid=$pid
say "agents started uptime=$(up)"

wait $virtio_pid; rc=$?
say "virtio agent exited rc=$rc"
wait $serial_pid; rc=$?
say "serial agent exited rc=$rc"
say "poweroff uptime=$(up)"
sync
poweroff -f
sleep 10
