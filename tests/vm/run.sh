#!/usr/bin/env bash
# tests/vm/run.sh — tuppence in a real QEMU guest, over virtio-serial, an 8250 serial port
# and AF_VSOCK.
#
#   1. builds `tuppence` once as a static binary (crt-static glibc);
#   2. makes a tiny initramfs: static busybox, the binary, the virtio/vsock kernel modules of
#      the installed Debian cloud kernel (with their modules.dep dependencies) and
#      tests/vm/init.sh as /init;
#   3. boots it with qemu-system-x86_64 (KVM when it works, else TCG), no network device,
#      a virtio-serial port org.opensuse.twopence.0 and ttyS1 each behind a host unix
#      socket, the console (ttyS0) in a log file;
#   4. checks AF_VSOCK inside the guest (init runs an agent on vsock_loopback and prints the
#      results: echo, exit code, user lookup, 1 MiB both ways, a second client's
#      `tuppence interrupt`, quit), then drives the guest's agents from the host over
#      virtio-serial and the serial port: ping, uname -r, exit codes, stdin/stdout/stderr,
#      user lookup, extract and inject checked by sha256 (10 MiB over virtio, 512 KiB over
#      serial), Ctrl-C forwarding, a client that vanishes mid-command followed by a new
#      client (once the agent noticed, and at once), a partial inject removed after its
#      client vanished (virtio: once the agent noticed, and at once; serial: at once),
#      clients that say hello exactly once (3.0 and 4.0, raw bytes like the C client;
#      tests/vm/raw_client.rs) right after a client that flooded output was killed, a
#      client that stalls 1.5 s in the middle of a data packet, and quit;
#   5. always tears the VM down, prints timings and ends with `vm: N passed, M failed`.
#
# Exit status: 0 all passed, 1 something failed, 77 skipped (the reason is printed as
# `SKIPPED: ...`; a skip is never reported as a pass).
#
# Environment:
#   TUPPENCE_BIN          use this tuppence binary instead of building one
#   TUPPENCE_VM_ACCEL     auto (default: KVM if /dev/kvm boots the guest, else TCG), kvm, tcg
#   TUPPENCE_VM_KERNEL    kernel image (default: the newest /boot/vmlinuz-* with virtio modules)
#   TUPPENCE_VM_TIMEOUT   seconds for the whole run after the build (default 300)
#   TUPPENCE_VM_BYTES     size of the big transfers (default 10485760)
#   TUPPENCE_VM_SERIAL_BYTES  size of the big transfers over the serial port (default 524288:
#                         through an emulated 8250 under TCG extract moves about 0.2 MB/s and
#                         inject about 0.13 MB/s, so 10 MiB there would take two minutes)
#   TUPPENCE_VM_SMP       guest CPUs (default 1)
#   TUPPENCE_VM_KEEP=1    keep the work directory (it is kept anyway when a check failed)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/vm"
T0=$(date +%s.%N)
PASSED=0
FAILED=0
TIMINGS=()
QEMU_PID=""
WATCHDOG_PID=""
BG_PIDS=()
FINISHED=0
BYTES=${TUPPENCE_VM_BYTES:-10485760}
SERIAL_BYTES=${TUPPENCE_VM_SERIAL_BYTES:-524288}
OVERALL=${TUPPENCE_VM_TIMEOUT:-300}
PORT_NAME=org.opensuse.twopence.0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log() { echo "[$(since "$T0")s] $*"; }
timing() { TIMINGS+=("$(printf '%-48s %7ss' "$1" "$2")"); }

skip() {
  cleanup
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
  echo "SKIPPED: $*"
  echo "vm: 0 passed, 0 failed, 1 skipped"
  FINISHED=1
  exit 77
}

# --- results: a step starts a clock, ok/bad record it -------------------------------------
STEP_T=$T0
step() { STEP_T=$(now); }
ok() {
  local d; d=$(since "$STEP_T")
  PASSED=$((PASSED + 1))
  printf 'PASS %-40s %6ss  %s\n' "$1" "$d" "${2:-}"
  timing "$1" "$d"
}
bad() {
  local d; d=$(since "$STEP_T")
  FAILED=$((FAILED + 1))
  printf 'FAIL %-40s %6ss  %s\n' "$1" "$d" "${2:-}"
  timing "$1 (FAILED)" "$d"
}
# check NAME CONDITION-RC DETAIL
check() { if [ "$2" = 0 ]; then ok "$1" "$3"; else bad "$1" "$3"; fi; }

# --- teardown -----------------------------------------------------------------------------
stop_qemu() {
  [ -n "$QEMU_PID" ] || return 0
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    kill -TERM "$QEMU_PID" 2>/dev/null
    for _ in $(seq 30); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$QEMU_PID" 2>/dev/null && kill -KILL "$QEMU_PID" 2>/dev/null
  fi
  wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=""
}
cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  stop_qemu
  if [ -n "$WATCHDOG_PID" ]; then kill "$WATCHDOG_PID" 2>/dev/null; wait "$WATCHDOG_PID" 2>/dev/null; WATCHDOG_PID=""; fi
}
finish() {
  trap - TERM INT
  cleanup
  if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
    if [ "$FAILED" -gt 0 ] || [ "${TUPPENCE_VM_KEEP:-0}" = 1 ]; then
      if [ "$FAILED" -gt 0 ] && [ -f "$WORK/console.log" ]; then
        echo "--- last 40 lines of the guest console ($WORK/console.log) ---"
        tail -n 40 "$WORK/console.log" | sed 's/\x1b\[[0-9;]*m//g' | tr -d '\r'
        echo "---"
      fi
      echo "work directory kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  echo "timings:"
  local t
  for t in "${TIMINGS[@]}"; do echo "  $t"; done
  printf '  %-48s %7ss\n' total "$(since "$T0")"
  FINISHED=1
  echo "vm: $PASSED passed, $FAILED failed"
  [ "$FAILED" = 0 ] && exit 0 || exit 1
}
on_signal() {
  echo "interrupted by $1: tearing the VM down"
  FAILED=$((FAILED + 1))
  finish
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap '[ "$FINISHED" = 1 ] || { cleanup; echo "vm: $PASSED passed, $((FAILED + 1)) failed (the script stopped early)"; }' EXIT

# --- prerequisites (skip, with the reason, when one is missing) ----------------------------
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(uname -m)" = x86_64 ] || skip "the test guest is x86_64 and this host is $(uname -m)"
QEMU=$(command -v qemu-system-x86_64) || skip "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
command -v timeout >/dev/null || skip "timeout (coreutils) not found"
command -v sha256sum >/dev/null || skip "sha256sum not found"
command -v rustc >/dev/null || skip "rustc not found (it builds the raw hello-once client, tests/vm/raw_client.rs)"

BUSYBOX=""
for b in /bin/busybox /usr/bin/busybox; do
  if [ -x "$b" ] && ! ldd "$b" 2>/dev/null | grep -q '=>'; then BUSYBOX=$b; break; fi
done
[ -n "$BUSYBOX" ] || skip "no static busybox (apt-get install busybox-static)"

kernel_ok() { # VERSION: its modules include virtio_console, virtio_pci and vsock_loopback
  local d=/lib/modules/$1 m
  [ -f "$d/modules.dep" ] || return 1
  for m in virtio_console virtio_pci vsock_loopback; do
    grep -Eq "/$m\.ko(\.xz|\.zst|\.gz)?:" "$d/modules.dep" || grep -Eq "/$m\.ko" "$d/modules.builtin" 2>/dev/null || return 1
  done
}
if [ -n "${TUPPENCE_VM_KERNEL:-}" ]; then
  KERNEL=$TUPPENCE_VM_KERNEL
  KVER=${KERNEL##*/vmlinuz-}
else
  KERNEL=""
  for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -rV); do
    v=${k##*/vmlinuz-}
    if kernel_ok "$v"; then KERNEL=$k; KVER=$v; break; fi
  done
  [ -n "$KERNEL" ] || skip "no /boot/vmlinuz-* with virtio_console, virtio_pci and vsock_loopback modules (apt-get install linux-image-cloud-amd64)"
fi
[ -r "$KERNEL" ] || skip "cannot read the kernel $KERNEL"
MODDIR=/lib/modules/$KVER
kernel_ok "$KVER" || skip "$MODDIR lacks virtio_console, virtio_pci or vsock_loopback"
if command -v cpio >/dev/null; then CPIO=(cpio --quiet -o -H newc -R 0:0); else CPIO=("$BUSYBOX" cpio -o -H newc -R 0:0); fi

WORK=$(mktemp -d /tmp/tuppence-vm.XXXXXX)
log "work directory $WORK; kernel $KERNEL ($KVER); qemu $("$QEMU" --version | head -1)"

# --- 1. the static binary ------------------------------------------------------------------
step
if [ -n "${TUPPENCE_BIN:-}" ]; then
  BIN=$TUPPENCE_BIN
  [ -x "$BIN" ] || skip "TUPPENCE_BIN=$BIN is not executable"
  log "using TUPPENCE_BIN=$BIN"
else
  [ -f "$ROOT/runtimes/cli/Cargo.toml" ] || skip "runtimes/cli (the tuppence binary) is not in this tree; set TUPPENCE_BIN to a static tuppence"
  command -v cargo >/dev/null || skip "cargo not found"
  TRIPLE=x86_64-unknown-linux-gnu
  log "building tuppence (static, --target $TRIPLE)"
  if ! (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --target "$TRIPLE" -p tuppence-cli) >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log"
    bad "build static tuppence" "cargo build failed (log above)"
    finish
  fi
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$TRIPLE/release/tuppence
fi
LIBS=()
lddout=$(ldd "$BIN" 2>&1)
if printf '%s' "$lddout" | grep -Eq 'not a dynamic executable|statically linked'; then
  ok "build static tuppence" "$(printf '%s' "$lddout" | head -1 | sed 's/^[[:space:]]*//'), $(stat -c %s "$BIN") bytes"
else
  # Not static: ship the loader and libraries it names into the initramfs.
  mapfile -t LIBS < <(printf '%s\n' "$lddout" | grep -o '/[^ ]*' | sort -u)
  ok "build tuppence (dynamic)" "NOT static: copying ${#LIBS[@]} libraries into the initramfs: ${LIBS[*]}"
fi

# The raw client (tests/vm/raw_client.rs) runs on the host: a plain build with rustc.
step
RAW=$WORK/raw-client
if rustc --edition 2021 -O -o "$RAW" "$HERE/raw_client.rs" >"$WORK/raw-build.log" 2>&1; then
  ok "build raw hello-once client" "$(stat -c %s "$RAW") bytes"
else
  tail -n 20 "$WORK/raw-build.log"
  bad "build raw hello-once client" "rustc failed (log above)"
  finish
fi

# The run's watchdog: after OVERALL seconds kill QEMU (which ends any client waiting on
# it), then stop the script.
# (The sleep holds no copy of our stdout: a stray sleep would keep a pipe such as
# `run.sh | tee` or cargo's captured output open long after the script ended.)
(
  trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$OVERALL" </dev/null >/dev/null 2>&1 &
  sp=$!
  wait "$sp" || exit 0
  echo "TIMEOUT: the VM test ran longer than ${OVERALL}s"
  [ -f "$WORK/qemu.pid" ] && kill -KILL "$(cat "$WORK/qemu.pid")" 2>/dev/null
  kill -TERM $$
) &
WATCHDOG_PID=$!

# --- 2. the initramfs ----------------------------------------------------------------------
step
R=$WORK/initramfs
mkdir -p "$R"/{bin,sbin,dev,etc,proc,sys,tmp,root,home/tp,modules}
cp "$BUSYBOX" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
cp "$BIN" "$R/bin/tuppence"
for l in "${LIBS[@]}"; do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done
cp "$HERE/init.sh" "$R/init"
chmod 755 "$R/init" "$R/bin/tuppence"
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
mknod -m 666 "$R/dev/null" c 1 3 2>/dev/null || true
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
tp:x:1000:1000:tuppence test user:/home/tp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
tp:x:1000:
tpextra:x:1001:tp
nogroup:x:65534:
EOF
echo 'passwd: files
group: files' >"$R/etc/nsswitch.conf"

# Modules and their dependencies (modules.dep), dependencies first, decompressed.
declare -A SEEN=()
ORDER=()
add_module() { # REL-PATH as in modules.dep
  local rel=$1 deps d
  [ -n "${SEEN[$rel]:-}" ] && return 0
  SEEN[$rel]=1
  deps=$(grep -m1 "^$rel:" "$MODDIR/modules.dep" | cut -d: -f2)
  for d in $deps; do add_module "$d"; done
  ORDER+=("$rel")
}
for m in virtio_pci virtio_console vsock vmw_vsock_virtio_transport_common vsock_loopback; do
  rel=$(grep -Eo "^[^:]*/$m\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -1 | tr -d :)
  if [ -z "$rel" ]; then
    grep -Eq "/$m\.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue
    bad "initramfs" "module $m not found in $MODDIR"
    finish
  fi
  add_module "$rel"
done
: >"$R/modules/order"
for rel in "${ORDER[@]}"; do
  base=$(basename "$rel")
  case "$rel" in
    *.ko.xz) out=${base%.xz}; xz -dc "$MODDIR/$rel" >"$R/modules/$out" || skip "cannot decompress $rel (xz)" ;;
    *.ko.zst) out=${base%.zst}; zstd -qdc "$MODDIR/$rel" >"$R/modules/$out" || skip "cannot decompress $rel (zstd)" ;;
    *.ko.gz) out=${base%.gz}; gzip -dc "$MODDIR/$rel" >"$R/modules/$out" || skip "cannot decompress $rel (gzip)" ;;
    *) out=$base; cp "$MODDIR/$rel" "$R/modules/$out" ;;
  esac
  echo "$out" >>"$R/modules/order"
done
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | "${CPIO[@]}") >"$WORK/initramfs.cpio" 2>"$WORK/cpio.log" \
  || { cat "$WORK/cpio.log"; bad "initramfs" "cpio failed"; finish; }
ok "initramfs" "$(stat -c %s "$WORK/initramfs.cpio") bytes; modules: $(tr '\n' ' ' <"$R/modules/order")"

# --- 3. boot -------------------------------------------------------------------------------
VSOCK_HOST=$WORK/virtio.sock   # the virtio-serial port's host side
SER_HOST=$WORK/serial.sock     # ttyS1's host side
CONSOLE=$WORK/console.log      # ttyS0

boot() { # ACCEL-ARGS...
  rm -f "$VSOCK_HOST" "$SER_HOST" "$CONSOLE"
  "$QEMU" -name tuppence-vm-test "$@" -m 512 -smp "${TUPPENCE_VM_SMP:-1}" \
    -nographic -monitor none -nic none -no-reboot \
    -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio" \
    -append "console=ttyS0 loglevel=4 panic=-1" \
    -chardev file,id=con,path="$CONSOLE" -serial chardev:con \
    -chardev socket,id=ser1,path="$SER_HOST",server=on,wait=off -serial chardev:ser1 \
    -chardev socket,id=tp,path="$VSOCK_HOST",server=on,wait=off \
    -device virtio-serial -device virtserialport,chardev=tp,name=$PORT_NAME \
    </dev/null >"$WORK/qemu.log" 2>&1 &
  QEMU_PID=$!
  disown "$QEMU_PID" # no "Aborted ... qemu-system-x86_64 ..." job report when KVM fails
  echo "$QEMU_PID" >"$WORK/qemu.pid"
}

# wait_console PATTERN SECONDS: until the console log has PATTERN (fixed string); fails
# early when QEMU is gone.
wait_console() {
  local end; end=$(awk -v n="$(now)" -v s="$2" 'BEGIN { printf "%.1f", n + s }')
  while :; do
    grep -aqF -- "$1" "$CONSOLE" 2>/dev/null && return 0
    kill -0 "$QEMU_PID" 2>/dev/null || return 2
    awk -v n="$(now)" -v e="$end" 'BEGIN { exit !(n > e) }' && return 1
    sleep 0.1
  done
}

ACCEL=${TUPPENCE_VM_ACCEL:-auto}
BOOTED=""
step
BOOT_T=$STEP_T
if [ "$ACCEL" = auto ] || [ "$ACCEL" = kvm ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    log "booting with KVM (-cpu host)"
    boot -accel kvm -cpu host
    if wait_console "TUPPENCE-VM: init" 15; then
      BOOTED=kvm
    else
      why="no init marker within 15 s"
      kill -0 "$QEMU_PID" 2>/dev/null || why="qemu exited: $(tail -n 2 "$WORK/qemu.log" | tr '\n' ' ')"
      stop_qemu
      [ "$ACCEL" = kvm ] && { bad "boot (KVM)" "$why"; finish; }
      log "KVM did not boot the guest ($why); falling back to TCG"
    fi
  elif [ "$ACCEL" = kvm ]; then
    skip "TUPPENCE_VM_ACCEL=kvm but /dev/kvm is not usable"
  else
    log "/dev/kvm is not usable; using TCG"
  fi
fi
if [ -z "$BOOTED" ]; then
  step
  BOOT_T=$STEP_T
  log "booting with TCG"
  boot -accel tcg
  wait_console "TUPPENCE-VM: init" 90
  case $? in
    0) BOOTED=tcg ;;
    2) bad "boot (TCG)" "qemu exited: $(tail -n 3 "$WORK/qemu.log" | tr '\n' ' ')"; finish ;;
    *) bad "boot (TCG)" "no init marker within 90 s"; finish ;;
  esac
fi
ok "boot to /init ($BOOTED)" "$(grep -ao -m1 'TUPPENCE-VM: init.*' "$CONSOLE" | tr -d '\r')"

# --- 4a. AF_VSOCK inside the guest ---------------------------------------------------------
step
if wait_console "TUPPENCE-VM: vsock checks done" 120; then
  timing "guest vsock checks (all)" "$(since "$STEP_T")"
  while IFS= read -r line; do
    line=${line%$'\r'}
    rest=${line#TUPPENCE-VSOCK: }
    verdict=${rest%% *}; rest=${rest#* }
    name=${rest%% *}; detail=${rest#"$name"}
    case $verdict in
      PASS) PASSED=$((PASSED + 1)); printf 'PASS %-40s %6s   %s\n' "vsock (in guest): $name" "" "$detail" ;;
      FAIL) FAILED=$((FAILED + 1)); printf 'FAIL %-40s %6s   %s\n' "vsock (in guest): $name" "" "$detail" ;;
      SKIPPED) echo "SKIPPED: vsock (in guest): $rest" ;;
    esac
  done < <(grep -a '^TUPPENCE-VSOCK: ' "$CONSOLE")
  grep -aEq '^TUPPENCE-VSOCK: (PASS|FAIL|SKIPPED) echo' "$CONSOLE" || { STEP_T=$(now); bad "vsock (in guest): echo" "no result line for 'tuppence run -t vsock:1:PORT -- echo ok'"; }
else
  bad "vsock (in guest)" "no 'vsock checks done' line within 120 s"
fi

# --- 4b. the host drives the guest's agents -----------------------------------------------
step
wait_console "tuppence serve: ready on virtio:" 60 && ok "virtio agent ready" "$(grep -ao -m1 'tuppence serve: ready on virtio:.*' "$CONSOLE" | tr -d '\r')" \
  || bad "virtio agent ready" "no ready line within 60 s"
step
wait_console "tuppence serve: ready on serial:" 60 && ok "serial agent ready" "$(grep -ao -m1 'tuppence serve: ready on serial:.*' "$CONSOLE" | tr -d '\r')" \
  || bad "serial agent ready" "no ready line within 60 s"
timing "boot to both agents ready" "$(since "$BOOT_T")"

# Every client call is bounded, so a hung link fails one check instead of the run.
tp() { timeout -k 5 "${TP_TIMEOUT:-60}" "$BIN" "$@"; }

head -c "$BYTES" /dev/urandom >"$WORK/up.bin"
[ "$SERIAL_BYTES" = "$BYTES" ] && cp "$WORK/up.bin" "$WORK/up-serial.bin" || head -c "$SERIAL_BYTES" /dev/urandom >"$WORK/up-serial.bin"

suite() { # NAME TARGET BYTES UPLOAD-FILE
  local n=$1 t=$2 size=$3 up=$4 out rc want got d pid i
  # (Serial clients keep the agent's keepalive: a keepalive a client sends just before it
  # exits can reach the port cut short once it has hung up. The agent drops such a
  # leftover after a second of silence, and the next client says hello again after 1.5 s
  # if the first one went into it: see Limits::stale_partial_after.)

  step; out=$(tp ping -t "$t" 2>&1 </dev/null); rc=$?
  check "$n: ping" "$rc" "rc=$rc $(echo "$out" | tr '\n' ' ' | cut -c1-120)"

  step; out=$(tp run -t "$t" -- uname -r 2>"$WORK/err" </dev/null); rc=$?
  [ "$rc" = 0 ] && [ "$out" = "$KVER" ]; check "$n: run uname -r" $? "rc=$rc got '$out' want '$KVER' $(head -c 200 "$WORK/err")"

  step; tp run -t "$t" -- 'exit 3' >/dev/null 2>"$WORK/err" </dev/null; rc=$?
  [ "$rc" = 3 ]; check "$n: exit 3 -> 3" $? "rc=$rc $(head -c 200 "$WORK/err")"

  step; out=$(printf 'hello\nworld\n' | tp run -t "$t" -- 'tr a-z A-Z; echo err >&2' 2>"$WORK/err"); rc=$?
  [ "$rc" = 0 ] && [ "$out" = $'HELLO\nWORLD' ] && [ "$(cat "$WORK/err")" = err ]; check "$n: stdin, stdout, stderr" $? "rc=$rc out='$(echo "$out" | tr '\n' ' ')' err='$(head -c 200 "$WORK/err")'"

  step; out=$(tp run -t "$t" -u tp -- 'id; echo "$HOME $USER $(pwd)"' 2>"$WORK/err" </dev/null); rc=$?
  [ "$rc" = 0 ] && [ "$out" = $'uid=1000(tp) gid=1000(tp) groups=1000(tp),1001(tpextra)\n/home/tp tp /home/tp' ]
  check "$n: run -u tp (getpwnam, groups)" $? "rc=$rc out='$(echo "$out" | tr '\n' '|')' $(head -c 200 "$WORK/err")"

  step; out=$(tp run -t "$t" -- 'id -un; echo $HOME' 2>"$WORK/err" </dev/null); rc=$?
  [ "$rc" = 0 ] && [ "$out" = $'root\n/root' ]; check "$n: run as root" $? "rc=$rc out='$(echo "$out" | tr '\n' '|')' $(head -c 200 "$WORK/err")"

  # Extract: the guest makes SIZE random bytes; the host's copy must hash the same.
  step; want=$(tp run -t "$t" -- "head -c $size /dev/urandom >/tmp/big.$n && sha256sum /tmp/big.$n" 2>"$WORK/err" </dev/null | cut -d' ' -f1)
  step; tp extract -t "$t" "/tmp/big.$n" "$WORK/big.$n" 2>"$WORK/err" </dev/null; rc=$?
  d=$(since "$STEP_T")
  got=$(sha256sum <"$WORK/big.$n" 2>/dev/null | cut -d' ' -f1)
  [ "$rc" = 0 ] && [ -n "$want" ] && [ "$got" = "$want" ]
  check "$n: extract $size bytes" $? "rc=$rc $(awk -v b="$size" -v d="$d" 'BEGIN { if (d > 0) printf "%.2f MB/s", b / d / 1e6 }') sha256 $got (guest $want) $(head -c 200 "$WORK/err")"

  # Inject: the host's SIZE random bytes, mode 0640; the guest's copy must hash the same.
  want=$(sha256sum <"$up" | cut -d' ' -f1)
  step; tp inject -t "$t" -m 0640 "$up" "/tmp/up.$n" 2>"$WORK/err" </dev/null; rc=$?
  d=$(since "$STEP_T")
  got=$(tp run -t "$t" -- "sha256sum /tmp/up.$n | cut -d' ' -f1; stat -c %a /tmp/up.$n; rm -f /tmp/up.$n /tmp/big.$n" 2>>"$WORK/err" </dev/null | tr '\n' ' ')
  STEP_T=$(awk -v n="$(now)" -v d="$d" 'BEGIN { printf "%.6f", n - d }')
  [ "$rc" = 0 ] && [ "$got" = "$want 640 " ]
  check "$n: inject $size bytes" $? "rc=$rc $(awk -v b="$size" -v d="$d" 'BEGIN { if (d > 0) printf "%.2f MB/s", b / d / 1e6 }') guest: $got(want $want 640) $(head -c 200 "$WORK/err")"

  # Ctrl-C: SIGINT to the client is forwarded; the remote sleep dies of it: 128+2.
  step; : >"$WORK/int.out"
  # (the client itself in the background, not a function's subshell: $! must be its pid)
  "$BIN" run -t "$t" -- 'echo started; exec sleep 100' >"$WORK/int.out" 2>"$WORK/err" </dev/null &
  pid=$!; BG_PIDS+=("$pid")
  for i in $(seq 150); do grep -q started "$WORK/int.out" && break; sleep 0.1; done
  kill -INT "$pid"
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"; wait "$pid" 2>/dev/null
    bad "$n: interrupt sleep 100 -> 130" "the client still runs 15 s after SIGINT"
  else
    wait "$pid"; rc=$?
    [ "$rc" = 130 ]; check "$n: interrupt sleep 100 -> 130" $? "rc=$rc $(head -c 200 "$WORK/err")"
  fi

  # The host goes away mid-command. virtio: the port reports the hang-up; serial: a tty
  # has none, so the agent runs with --port-keepalive and notices the silence. First the
  # next client connects once the agent logged the disconnect; then at once: a client
  # that arrives before the agent saw the hang-up (on serial: always) is on the old
  # session's link, and its hello ends that session (the old commands killed, partial
  # files removed, nothing of the old session's output reaching the new client).
  if [ "$n" = serial ]; then
    vanish "$n" "$t" "new client after keepalive expiry" "client disconnected cid=[0-9]* peer=serial" ""
    vanish "$n" "$t" "new client right after one vanished" "" "session reset|client disconnected cid=[0-9]* peer=serial"
  else
    vanish "$n" "$t" "new client after the host hung up" "client disconnected cid=[0-9]* peer=virtio" ""
    vanish "$n" "$t" "new client right after one vanished" "" "session reset|client disconnected cid=[0-9]* peer=virtio"
  fi
}

# console_count REGEX: lines of the console log matching REGEX, colours stripped (the
# agents' log lines carry ANSI escapes: the console is a terminal).
console_count() { sed 's/\x1b\[[0-9;]*m//g' "$CONSOLE" | grep -acE -- "$1"; }

# vanish NAME TARGET CHECK-NAME NOTICE-PATTERN SETTLE-PATTERN: a client runs `sleep 100`
# and is killed (SIGKILL: the host goes away mid-command). With NOTICE-PATTERN, wait (15 s
# at most) until the console has one more line matching it (the agent noticed) before the
# next client. The next client must be served, and the vanished client's sleep must be
# gone. With SETTLE-PATTERN, a failed check waits (15 s at most) for one more such line,
# so that the checks after it start on a link the agent has reset.
vanish() {
  local n=$1 t=$2 what=$3 pattern=$4 settle=$5 pid out rc i before noticed="" ok_rc
  step; : >"$WORK/gone.out"
  "$BIN" run -t "$t" -- 'echo started; exec sleep 100' >"$WORK/gone.out" 2>/dev/null </dev/null &
  pid=$!; BG_PIDS+=("$pid")
  for i in $(seq 150); do grep -q started "$WORK/gone.out" && break; sleep 0.1; done
  [ -n "$pattern" ] && before=$(console_count "$pattern")
  step; kill -KILL "$pid"; wait "$pid" 2>/dev/null
  if [ -n "$pattern" ]; then
    noticed="not noticed within 15 s"
    for i in $(seq 150); do
      if [ "$(console_count "$pattern")" -gt "$before" ]; then noticed="noticed after $(since "$STEP_T") s"; break; fi
      sleep 0.1
    done
  fi
  # (a killed sleep may still be a zombie the agent reaps a moment later: those do not count)
  out=$(TP_TIMEOUT=20 tp run -t "$t" -- 'echo back; for p in $(pidof sleep); do s=$(cut -d" " -f3 /proc/$p/stat 2>/dev/null); [ -z "$s" ] || [ "$s" = Z ] || echo "sleep $p is alive ($s)"; done; echo checked' 2>"$WORK/err" </dev/null); rc=$?
  [ "$rc" = 0 ] && [ "$out" = $'back\nchecked' ]; ok_rc=$?
  check "$n: $what" $ok_rc "$noticed rc=$rc out='$(echo "$out" | tr '\n' '|')' $(head -c 200 "$WORK/err")"
  if [ "$ok_rc" != 0 ] && [ -n "$settle" ]; then
    before=$(console_count "$settle")
    for i in $(seq 150); do [ "$(console_count "$settle")" -gt "$before" ] && break; sleep 0.1; done
    log "$n: waited $(since "$STEP_T") s in all for the agent to reset the link"
  fi
}

# A client killed in the middle of an inject (it waits for more stdin): the agent must
# remove its partial file, and not commit it. The other agent shows that the temporary
# file existed while the inject was under way. With NOTICE-PATTERN the next client comes
# once the agent logged the disconnect (virtio reports the hang-up); without, at once: its
# hello then ends the old session (and, over virtio, may be read after half a data
# packet of the killed client: the agent finds the hello behind that leftover and drops
# the leftover).
partial_inject() { # NAME TARGET OTHER-TARGET BYTES CHECK-NAME [NOTICE-PATTERN]
  local n=$1 t=$2 other=$3 bytes=$4 what=$5 pattern=${6:-} pid out rc during before i tag
  tag=partial.$n.$RANDOM
  step; rm -f "$WORK/fifo"; mkfifo "$WORK/fifo"
  "$BIN" inject -t "$t" - "/tmp/$tag" <"$WORK/fifo" >/dev/null 2>&1 &
  pid=$!; BG_PIDS+=("$pid")
  exec 9>"$WORK/fifo"
  head -c "$bytes" /dev/urandom >&9
  sleep 1
  during=$(tp run -t "$other" -- "ls -a /tmp | grep $tag" 2>/dev/null </dev/null | tr '\n' ' ')
  [ -n "$pattern" ] && before=$(console_count "$pattern")
  kill -KILL "$pid"; wait "$pid" 2>/dev/null
  exec 9>&-
  if [ -n "$pattern" ]; then
    for i in $(seq 100); do [ "$(console_count "$pattern")" -gt "$before" ] && break; sleep 0.1; done
  fi
  out=$(tp run -t "$t" -- "ls -a /tmp | grep $tag || echo none" 2>"$WORK/err" </dev/null); rc=$?
  [ "$rc" = 0 ] && [ "$out" = none ] && [ -n "$during" ]
  check "$n: $what" $? "rc=$rc during: '$during' after: '$(echo "$out" | tr '\n' ' ')' $(head -c 200 "$WORK/err")"
}

# Clients that say hello exactly once (tests/vm/raw_client.rs, raw bytes like the C
# client), ROUNDS times per dialect: a tuppence client's command floods output and the
# client is killed while the agent still writes; the raw client connects at once (odd
# rounds), or had connected and said hello before (even rounds: QEMU holds it, and opens
# the port with its hello right after closing the old connection). A guest can read that
# hello before it learns that the previous connection closed (the hang-up comes with the
# next read): the port's next session must answer it. The 3.0 client also follows a 4.0
# session on the same port. The detail counts the agent's log lines for a hello carried
# over a hang-up (how often the race happened).
hello_once_after_output() { # NAME SOCKET TARGET ROUNDS
  local n=$1 sock=$2 t=$3 rounds=$4 d i pid raw out rc fails=0 detail="" carried
  local race="a new client's hello arrived as the port hung up"
  step
  carried=$(console_count "$race")
  for d in 3 4; do
    for i in $(seq "$rounds"); do
      : >"$WORK/flood.out"
      "$BIN" run -t "$t" -- 'exec cat /dev/zero' >"$WORK/flood.out" 2>/dev/null </dev/null &
      pid=$!; BG_PIDS+=("$pid")
      for _ in $(seq 200); do [ "$(stat -c %s "$WORK/flood.out")" -gt 65536 ] && break; sleep 0.05; done
      if [ $((i % 2)) = 0 ]; then
        RAW_CLIENT_DEADLINE=20 "$RAW" "$sock" "$d" run "echo round-$d-$i" >"$WORK/raw.out" 2>"$WORK/raw.err" </dev/null &
        raw=$!; BG_PIDS+=("$raw")
        sleep 0.2 # (lets it connect and say hello first: the scenario, not a wait)
        kill -KILL "$pid"; wait "$pid" 2>/dev/null
      else
        kill -KILL "$pid"; wait "$pid" 2>/dev/null
        RAW_CLIENT_DEADLINE=20 "$RAW" "$sock" "$d" run "echo round-$d-$i" >"$WORK/raw.out" 2>"$WORK/raw.err" </dev/null &
        raw=$!; BG_PIDS+=("$raw")
      fi
      wait "$raw"; rc=$?
      out=$(cat "$WORK/raw.out")
      if [ "$rc" != 0 ] || [ "$out" != "round-$d-$i" ]; then
        fails=$((fails + 1))
        detail="$detail [$d.0 round $i: rc=$rc out='$out' $(head -c 120 "$WORK/raw.err" | tr '\n' ' ')]"
      fi
    done
  done
  carried=$(( $(console_count "$race") - carried ))
  [ "$fails" = 0 ]
  check "$n: hello once, right after a flooded client left" $? "$((2 * rounds - fails))/$((2 * rounds)) served, $carried carried over a hang-up$detail"
}

# A raw client (3.0 and 4.0) that stalls 1.5 s in the middle of a data packet of an
# inject (a loaded host, a descheduled VM): the agent must not take the stalled packet for
# a dead client's leftover; the file arrives intact.
stalled_inject() { # NAME SOCKET TARGET
  local n=$1 sock=$2 t=$3 d rc got want detail="" fails=0
  step
  head -c 65536 /dev/urandom >"$WORK/stall.bin"
  want=$(sha256sum <"$WORK/stall.bin" | cut -d' ' -f1)
  for d in 3 4; do
    RAW_CLIENT_DEADLINE=20 "$RAW" "$sock" "$d" inject "$WORK/stall.bin" "/tmp/stall.$n.$d" 1500 2>"$WORK/raw.err" </dev/null; rc=$?
    got=$(tp run -t "$t" -- "sha256sum /tmp/stall.$n.$d 2>&1 | cut -d' ' -f1; rm -f /tmp/stall.$n.$d" 2>/dev/null </dev/null)
    if [ "$rc" != 0 ] || [ "$got" != "$want" ]; then
      fails=$((fails + 1))
      detail="$detail [$d.0: rc=$rc guest sha256 $got $(head -c 120 "$WORK/raw.err" | tr '\n' ' ')]"
    fi
  done
  [ "$fails" = 0 ]
  check "$n: a client stalls 1.5 s mid-packet (3.0, 4.0)" $? "64 KiB inject each, want sha256 $want$detail"
}

step; STEP_SUITE=$(now)
suite virtio "virtio:$VSOCK_HOST" "$BYTES" "$WORK/up.bin"
partial_inject virtio "virtio:$VSOCK_HOST" "unix:$SER_HOST" 1048576 "partial inject removed" "client disconnected cid=[0-9]* peer=virtio"
partial_inject virtio "virtio:$VSOCK_HOST" "unix:$SER_HOST" 1048576 "partial inject removed, next client at once"
hello_once_after_output virtio "$VSOCK_HOST" "virtio:$VSOCK_HOST" 4
stalled_inject virtio "$VSOCK_HOST" "virtio:$VSOCK_HOST"
timing "virtio suite (all)" "$(since "$STEP_SUITE")"
STEP_SUITE=$(now)
suite serial "unix:$SER_HOST" "$SERIAL_BYTES" "$WORK/up-serial.bin"
partial_inject serial "unix:$SER_HOST" "virtio:$VSOCK_HOST" 16384 "partial inject removed, next client at once"
hello_once_after_output serial "$SER_HOST" "unix:$SER_HOST" 2
stalled_inject serial "$SER_HOST" "unix:$SER_HOST"
timing "serial suite (all)" "$(since "$STEP_SUITE")"

# --- quit: both agents exit, init powers the guest off --------------------------------------
step; tp quit -t "virtio:$VSOCK_HOST" 2>"$WORK/err" </dev/null; rc=$?
wait_console "TUPPENCE-VM: virtio agent exited" 10; w=$?
[ "$rc" = 0 ] && [ "$w" = 0 ]; check "virtio: quit" $? "rc=$rc $(head -c 200 "$WORK/err")"
step; tp quit -t "unix:$SER_HOST" 2>"$WORK/err" </dev/null; rc=$?
wait_console "TUPPENCE-VM: serial agent exited" 10; w=$?
[ "$rc" = 0 ] && [ "$w" = 0 ]; check "serial: quit" $? "rc=$rc $(head -c 200 "$WORK/err")"
step
for _ in $(seq 100); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$QEMU_PID" 2>/dev/null; then
  bad "guest powered off" "qemu still runs 10 s after both agents quit"
else
  wait "$QEMU_PID" 2>/dev/null
  QEMU_PID=""
  ok "guest powered off" ""
fi
finish
