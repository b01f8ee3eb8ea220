# Sourced by scripts that start servers on loopback (demo.sh,
# test-monitoring.sh).
#
# free_port VAR sets VAR to a loopback TCP port that nothing listens on now
# and that this script has not handed out before. (It must not run in a
# $(...) subshell, which would forget the ports handed out.)
used_ports=" "
free_port() {
  local p
  while :; do
    p=$(( 20000 + RANDOM % 30000 ))
    case "$used_ports" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      used_ports+="$p "
      printf -v "$1" %s "$p"
      return
    fi
  done
}
