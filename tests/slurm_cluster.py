"""A single-node SLURM cluster on this machine for the tests, from Debian's packages (munge, slurmctld, slurmd,
slurm-client): no systemd, no cgroups (process tracking by linuxproc, no task plugin), no accounting database
(the profile checks job status with squeue; finished jobs stay visible for MinJobAge, an hour, so that the test
can read every job's allocation at the end), and two fake GPUs (character devices as their files)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

CONF_DIR = Path("/etc/slurm")  # the standard path: jobs run with SLURM_* variables cleared
LOG_DIR = Path("/var/log/slurm")
DAEMONS = ("slurmd", "slurmctld", "munged")


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM test needs root (it starts munged, slurmctld and slurmd)"
    for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install munge slurmctld slurmd slurm-client (.ci/run does)"
    return None


def slurm_conf(node: str, cpus: int, memory_mb: int, gpus: int, log_dir: Path) -> str:
    return f"""# Written by tests/slurm_cluster.py for the test run; removed when the cluster stops.
ClusterName=ci
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=3600
ReturnToService=2
MpiDefault=none
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(gpus: int) -> str:
    devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"][:gpus]
    # Slurm 22.05 drops a GPU without a device file: point each fake GPU at an existing character device.
    return "AutoDetect=off\n" + "".join(f"Name=gpu File={d}\n" for d in devices)


class SlurmCluster:
    def __init__(self, cpus: int | None = None, memory_mb: int = 16000, gpus: int = 2, start_timeout: float = 60,
                 log_dir: Path = LOG_DIR):
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 2
        self.memory_mb = memory_mb
        self.gpus = gpus
        self.start_timeout = start_timeout
        self.log_dir = Path(log_dir)
        self.processes: dict[str, subprocess.Popen] = {}
        self.configured = False  # whether this instance wrote /etc/slurm and so may remove it

    def start(self) -> None:
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for folder in (Path("/var/spool/slurmctld"), Path("/var/spool/slurmd")):
            folder.mkdir(parents=True, exist_ok=True)
        self.configured = True
        (CONF_DIR / "slurm.conf").write_text(slurm_conf(self.node, self.cpus, self.memory_mb, self.gpus, self.log_dir))
        (CONF_DIR / "gres.conf").write_text(gres_conf(self.gpus))
        munge_run = Path("/run/munge")
        munge_run.mkdir(parents=True, exist_ok=True)
        shutil.chown(munge_run, "munge", "munge")
        self._daemon("munged", ["runuser", "-u", "munge", "--", "munged", "--foreground"])
        self._wait("munge", lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0)
        # -c: a clean start, without jobs of an earlier run in the state folder.
        self._daemon("slurmctld", ["slurmctld", "-D", "-c", "-i"])
        self._wait("slurmctld", lambda: subprocess.run(["scontrol", "ping"], capture_output=True,
                                                       text=True).stdout.count("UP") > 0)
        self._daemon("slurmd", ["slurmd", "-D", "-N", self.node])
        self._wait("slurmd (node idle)", lambda: subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                              text=True).stdout.strip() == "idle")

    def _daemon(self, name: str, command: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.stdout", "w")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def _wait(self, what: str, ready) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                       f"{self.logs()}")
            if ready():
                return
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"{what} did not come up within {self.start_timeout:.0f} s:\n{self.logs()}")

    def logs(self, lines: int = 20) -> str:
        text = []
        for path in sorted(self.log_dir.glob("*")):
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text.append(f"--- {path}\n" + "\n".join(tail))
        return "\n".join(text)

    def stop(self) -> None:
        if self.configured and shutil.which("scancel") and "slurmctld" in self.processes:
            subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=30)
        for name in DAEMONS:
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # Without a controller, a present slurm.conf slows every later snakemake call (the plugin asks scontrol).
        if self.configured:
            for name in ("slurm.conf", "gres.conf"):
                (CONF_DIR / name).unlink(missing_ok=True)
            self.configured = False

    def job_records(self) -> dict[str, dict]:
        """Every job SLURM still holds (MinJobAge keeps finished ones for an hour), by job id: JobState,
        TresPerJob (e.g. gres:gpu:1), TRES, ... as ``scontrol show job`` prints them."""
        out = subprocess.run(["scontrol", "--oneliner", "show", "job"], capture_output=True, text=True,
                             timeout=60).stdout
        records = {}
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if "JobId" in fields:
                records[fields["JobId"]] = fields
        return records
