#!/bin/sh
# agent.sh [TTY]: a command channel from the host into the test guest that does not depend
# on the guest's network (Tools/qemu10-check.sh changes NICs, channels and memory under it).
# QEMU gives the guest a second serial port (-serial unix:PATH,server=on,wait=off -> ttyS1);
# the host writes one line "ID COMMAND..." and the agent answers
#   TW-AGENT-BEGIN ID
#   ...whatever `sh -c COMMAND` printed (stdout and stderr)...
#   TW-AGENT-END ID STATUS
# One command at a time; a command that should outlast its answer backgrounds itself.
# Start it from tw.pre: tw.pre="/etc/tapwire/agent.sh &". It says "tw-agent: ready on TTY" on
# the console once it listens.
TTY=${1:-/dev/ttyS1}
[ -c "$TTY" ] || { echo "tw-agent: no $TTY"; exit 1; }
# Raw: no echo, no line editing, no CR/LF translation in either direction.
stty -F "$TTY" raw -echo -echoe -echok -echoctl -echoke 2>/dev/null || stty -F "$TTY" raw -echo ||
    { echo "tw-agent: cannot set $TTY raw"; exit 1; }
exec 3<>"$TTY"
echo "tw-agent: ready on $TTY"
while IFS= read -r line <&3; do
    id=${line%% *}
    cmd=${line#* }
    [ -n "$id" ] && [ "$id" != "$line" ] || continue
    echo "TW-AGENT-BEGIN $id" >&3
    sh -c "$cmd" </dev/null >&3 2>&1
    echo "TW-AGENT-END $id $?" >&3
done
echo "tw-agent: $TTY closed"
