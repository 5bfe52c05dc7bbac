# tuppence sniff NAT task: sh -c THIS_SCRIPT NAME CURL URL
# CURL is split into words; URL answers with the caller's public address as plain text
# (passed with --url, so even a URL starting with "-" cannot become an option).
# Prints two lines, for IPv4 then IPv6: NONE (no answer), DIRECT (the address is one of
# this system's own) or NAT (it is not).
curl=$1 url=$2
locals=$(ip addr show 2>/dev/null | sed -n 's/^ *inet6\{0,1\} \([^/ ]*\).*/\1/p')
for fam in 4 6; do
	# shellcheck disable=SC2086 # the command is meant to split
	addr=$($curl -s -k -f "-$fam" --max-time 30 --url "$url" </dev/null 2>/dev/null) || addr=
	addr=$(printf '%s' "$addr" | tr -d ' \t\r\n')
	if [ -z "$addr" ]; then
		echo NONE
		continue
	fi
	found=NAT
	for a in $locals; do
		[ "$a" = "$addr" ] && found=DIRECT
	done
	echo "$found"
done
