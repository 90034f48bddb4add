#!/usr/bin/env bash
# A single-node Slurm cluster for the tests, from Debian's packages (slurmctld, slurmd, slurm-client, munge;
# scripts/setup.sh --test installs them), without systemd or cgroups:
#
#   slurm-cluster.sh start DIR   # state, spool, logs and slurm.conf under DIR; prints `export SLURM_CONF=...`
#   slurm-cluster.sh stop DIR    # stops the daemons it started, by their PIDs
#
# Only one such cluster runs at a time on a machine (ports 6817/6818 and /run/munge are shared). Facts
# behind each setting: ../shared/spec/environment.md.
set -euo pipefail
cmd="${1:?usage: slurm-cluster.sh start|stop DIR}"
dir="$(mkdir -p "${2:?usage: slurm-cluster.sh start|stop DIR}" && cd "$2" && pwd)"

stop() {
  for name in slurmd slurmctld munged; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$name.pid"
  done
}

case "$cmd" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "slurm-cluster.sh: unknown command $cmd (start or stop)" >&2; exit 2 ;;
esac

for bin in munged slurmctld slurmd sbatch; do
  command -v "$bin" >/dev/null || { echo "slurm-cluster.sh: $bin is not installed (run scripts/setup.sh --test)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "slurm-cluster.sh: the test cluster runs its daemons as root" >&2; exit 1; }
trap 'stop' ERR
mkdir -p "$dir/state" "$dir/spool" "$dir/log"

# munge: systemd would make /run/munge; its daemon runs as the munge user.
if ! pgrep -x munged >/dev/null; then
  install -d -o munge -g munge -m 0755 /run/munge
  setpriv --reuid=munge --regid=munge --clear-groups munged -F >"$dir/log/munged.log" 2>&1 &
  echo $! >"$dir/munged.pid"
  for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
fi

host="$(hostname -s)"
cpus="$(nproc)"
cat >"$dir/slurm.conf" <<EOF
ClusterName=emo-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid.conf
SlurmdPidFile=$dir/slurmd.pid.conf
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
DependencyParameters=kill_invalid_depend
MinJobAge=3600
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -D >"$dir/log/slurmctld.out" 2>&1 &
echo $! >"$dir/slurmctld.pid"
slurmd -D >"$dir/log/slurmd.out" 2>&1 &
echo $! >"$dir/slurmd.pid"
for _ in $(seq 150); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-cluster.sh: the node did not become idle in 30 s; logs in $dir/log" >&2
sinfo >&2 || true
tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
stop
exit 1
