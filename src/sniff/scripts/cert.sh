# tuppence sniff certificate task: sh -c THIS_SCRIPT NAME OPENSSL {HOST PORT STARTTLS}...
# OPENSSL is split into words; STARTTLS is empty or smtp/pop3/imap/ftp/xmpp.
# Per host it prints a block:
#   -----BEGIN HOST-----
#   (only if s_client printed anything:)
#   -----CIPHER-----, -----PROTOCOL-----, then per certificate of the chain: its PEM,
#   -----FINGERPRINT----- (SHA-1, upper-case hex, no colons), -----NAME----- (CN and DNS
#   subject alternative names, sorted, unique, one per line), -----EXPIRY----- (notAfter)
#   -----END HOST-----
openssl=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/tuppence-sniff-cert.XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
while [ "$#" -ge 3 ]; do
	host=$1 port=$2 starttls=$3
	shift 3
	rm -f "$dir"/*
	st=
	[ -n "$starttls" ] && st="-starttls $starttls"
	# shellcheck disable=SC2086 # the command and the starttls option are meant to split
	$openssl s_client -servername "$host" -connect "$host:$port" $st -showcerts \
		</dev/null >"$dir/out" 2>/dev/null
	echo '-----BEGIN HOST-----'
	if [ -s "$dir/out" ]; then
		# The SSL-Session block (TLS <= 1.2) names both; with TLS 1.3 openssl 3 prints no
		# session before the first ticket, only "New, TLSv1.3, Cipher is NAME".
		cipher=$(sed -n 's/^ *Cipher *: *//p' "$dir/out" | head -n 1)
		[ -n "$cipher" ] || cipher=$(sed -n 's/^New, [^,]*, Cipher is //p' "$dir/out" | head -n 1)
		protocol=$(sed -n 's/^ *Protocol *: *//p' "$dir/out" | head -n 1)
		[ -n "$protocol" ] || protocol=$(sed -n 's/^New, \([^,]*\), Cipher is .*/\1/p' "$dir/out" | head -n 1)
		echo '-----CIPHER-----'
		printf '%s\n' "$cipher"
		echo '-----PROTOCOL-----'
		printf '%s\n' "$protocol"
		awk -v dir="$dir" '
			/^-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/%05d.pem", dir, n) }
			f != "" { print > f }
			/^-----END CERTIFICATE-----/ { if (f != "") close(f); f = "" }
		' "$dir/out"
		for pem in "$dir"/[0-9]*.pem; do
			[ -f "$pem" ] || continue
			$openssl x509 -in "$pem" 2>/dev/null
			echo '-----FINGERPRINT-----'
			$openssl x509 -in "$pem" -noout -fingerprint -sha1 2>/dev/null | sed 's/.*=//; s/://g'
			echo '-----NAME-----'
			{
				$openssl x509 -in "$pem" -noout -subject -nameopt multiline 2>/dev/null |
					sed -n 's/^ *commonName *= *//p'
				$openssl x509 -in "$pem" -noout -ext subjectAltName 2>/dev/null |
					tr ',' '\n' | sed -n 's/^ *DNS://p'
			} | sort -u
			echo '-----EXPIRY-----'
			$openssl x509 -in "$pem" -noout -enddate 2>/dev/null | sed 's/^notAfter=//'
		done
	fi
	echo '-----END HOST-----'
done
