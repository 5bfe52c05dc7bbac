# tuppence sniff ping task: sh -c THIS_SCRIPT NAME PING_COMMAND {PROTO COUNT SIZE HOST}...
# PING_COMMAND is split into words ("ping", "busybox ping"); PROTO is 4, 6 or X.
# Prints one line per host: "IP SEQ:MS ... END", "IP END" (no replies) or "END" (unresolved).
# Sequence numbers are 0-based whichever ping runs (iputils counts from 1, busybox from 0).
ping_cmd=$1
shift
while [ "$#" -ge 4 ]; do
	proto=$1 count=$2 size=$3 host=$4
	shift 4
	case $proto in
	4) fam=-4 ;;
	6) fam=-6 ;;
	*) fam= ;;
	esac
	# shellcheck disable=SC2086 # the command and the family flag are meant to split
	$ping_cmd $fam -c "$count" -s "$size" -- "$host" 2>/dev/null </dev/null | {
		while IFS= read -r line; do
			case $line in
			PING*)
				ip=${line%%\)*}
				ip=${ip##*\(}
				printf '%s ' "$ip"
				;;
			*" icmp_seq="*" time="*)
				seq=${line#* icmp_seq=}
				seq=${seq%% *}
				ms=${line#* time=}
				ms=${ms%% *}
				printf '%s:%s ' "$((seq - 1))" "$ms"
				;;
			*" seq="*" time="*)
				seq=${line#* seq=}
				seq=${seq%% *}
				ms=${line#* time=}
				ms=${ms%% *}
				printf '%s:%s ' "$seq" "$ms"
				;;
			esac
		done
		echo END
	}
done
