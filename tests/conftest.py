import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "templates" / "team.example.yaml"


# The suite runs on two processes (pytest-xdist, pyproject's addopts), a group of tests at a time: a module's tests
# together, so that its fixtures (a trained tiny model, say) are built once, and every module that uses the SLURM lab
# together, on one process: the lab is one cluster with fixed addresses, and its tests expect its nodes idle. The
# longest groups go first: the lab's (the longest) on one process while the other takes the CPU GRPO runs, then
# the next longest, so that the suite ends on short tests on both processes: with the README's quick
# start left to its place in the alphabet, one process ran it alone for the suite's last 6 minutes.
LAB_MODULES = ("tests/test_slurm_chain.py", "tests/test_slurm_multinode.py")
FIRST = ("slurm-lab", "tests/test_grpo_learns.py", "tests/test_readmes.py", "tests/test_learn_bench.py", "tests/test_merge.py")


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def group_of(nodeid: str) -> str:
    module = module_of(nodeid)
    return "slurm-lab" if module in LAB_MODULES else module


# Both processes start in the background (nice 10) and the one that takes the lab comes back to 0 (the lab fixture):
# the lab's jobs then get the CPU when both want it. Its multi-node Ray and its time limits are timed: sharing the CPU
# with CPU GRPO runs at equal priority, a worker node's `ray start` timed out reaching the head, and an SFT's start-up
# outlasted its 2 minutes to the save deadline. The other process soaks up what the lab leaves. Once the lab's tests
# are done, their process goes back to 10: other tests have Ray timed too (a starting node must register within 30 s,
# hard-coded in Ray), and one started at nice 10 beside a GRPO run at 0 missed it.
BACKGROUND_NICENESS = 10


def run_at_niceness(niceness: int) -> None:
    """This process and what it starts from now on. Where the kernel groups processes by session (autogroup), the
    scheduler shares the CPU between sessions first and reads nice only within one, and the lab's jobs run in sessions
    of their own: so this process takes a session of its own and gives that the niceness too."""
    os.setpriority(os.PRIO_PROCESS, 0, niceness)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        try:
            if os.getsid(0) != os.getpid():
                os.setsid()
            autogroup.write_text(str(niceness))
        except OSError:  # a process group leader cannot take a new session; a kernel without autogroup
            pass


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_at_niceness(BACKGROUND_NICENESS)
        # Ray starts its workers 15 nicer than itself by default: the lab's would fall behind the other process's jobs
        os.environ["RAY_worker_niceness"] = "0"


def pytest_runtest_setup(item):
    """The first test after the lab's (a group runs whole, on one process) sends its process back to the background."""
    if (os.environ.get("PYTEST_XDIST_WORKER") and group_of(item.nodeid) != "slurm-lab"
            and os.getpriority(os.PRIO_PROCESS, 0) < BACKGROUND_NICENESS):
        run_at_niceness(BACKGROUND_NICENESS)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByTestGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ByTestGroup(config, log)


def pytest_collection_modifyitems(items):
    strays = sorted({module_of(item.nodeid) for item in items if "lab" in item.fixturenames} - set(LAB_MODULES))
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)} use the SLURM lab: add them to LAB_MODULES in tests/conftest.py "
                                "(the lab's tests must all run on one process)")
    order = {group: rank for rank, group in enumerate(FIRST)}
    items.sort(key=lambda item: order.get(group_of(item.nodeid), len(FIRST)))


def bridge(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "llm_bridge.cli", *args], cwd=cwd, capture_output=True, text=True)


# The example is team P01's config; a copy must name its own team's partition, nodes, shares and accounts
# (`llm-bridge check` flags P01's values in a copy). Tests are team P07, as a member's edited copy would be.
OUR_TEAM = [("P01", "P07"), ("p01-team", "p07-team"), ("osk-gpu[51-53]", "osk-gpu[61-63]")]


def as_our_team(text: str) -> str:
    """The edit README step 1 asks for, on the example's text: another team's values replaced by ours."""
    for theirs, ours in OUR_TEAM:
        text = text.replace(theirs, ours)
    return text


@pytest.fixture
def example() -> dict:
    """The example as team P07's team.yaml."""
    return yaml.safe_load(as_our_team(EXAMPLE.read_text()))


@pytest.fixture
def write_team(tmp_path):
    def write(data: dict | str, name: str = "team.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def fake_token(prefix: str, length: int = 34) -> str:
    """A token-shaped string built at run time, so no token-like literal is ever committed."""
    return prefix + "".join("aB3xY9" for _ in range(length))[:length]


# ---------------------------------------------------------------------------------------------
# The SLURM lab (tests/slurm/lab.sh): one cluster for every test that submits jobs
# ---------------------------------------------------------------------------------------------
LAB = REPO / "tests" / "slurm" / "lab.sh"
RUNS = REPO / ".slurm_runs"  # nodes have private /tmp: job files must live on the shared filesystem


class Lab:
    def __init__(self, bin_dir: Path, bringup_s: float):
        self.bin, self.bringup_s = bin_dir, bringup_s

    def run(self, cmd: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / cmd), *args], capture_output=True, text=True, timeout=timeout)

    def submit(self, script: Path, *args: str, env: dict) -> tuple[subprocess.Popen, str]:
        """sbatch --wait in the background; returns the process (its exit code is the job's) and the job id."""
        proc = subprocess.Popen([str(self.bin / "sbatch"), "--wait", str(script), *args], env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=script.parent)
        line = proc.stdout.readline()
        assert line.startswith("Submitted batch job"), line
        return proc, line.split()[-1]


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0 or not shutil.which("slurmctld", path="/usr/sbin"):
        pytest.fail("the SLURM lab needs root and Debian's slurm packages: run `bash tests/setup_machine.sh` as root")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_at_niceness(0)  # back to the foreground (BACKGROUND_NICENESS): the lab and its jobs inherit it
    start = time.time()
    out = subprocess.run([str(LAB), "start"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    env_line = subprocess.run([str(LAB), "env"], capture_output=True, text=True).stdout
    bin_dir = Path(env_line.split("PATH=")[1].split(":")[0])
    cluster = Lab(bin_dir, time.time() - start)
    unseen = hidden_from_nodes(cluster, REPO / "pyproject.toml")
    if unseen:
        subprocess.run([str(LAB), "stop"], capture_output=True, timeout=60)
        pytest.fail(unseen)
    yield cluster
    subprocess.run([str(LAB), "stop"], capture_output=True, timeout=60)


def hidden_from_nodes(lab: Lab, path: Path) -> str | None:
    """Why the lab's nodes cannot read path (None when they can). Jobs run there: a checkout they cannot see
    gives jobs that fail before their first line, with an empty log."""
    seen = lab.run("srun", "-N1", "test", "-r", str(path), timeout=60)
    if seen.returncode == 0:
        return None
    private = "/tmp" if Path("/tmp") in path.resolve().parents else None
    why = (f"each lab node mounts its own empty {private} (tests/slurm/lab.sh), like a cluster's node-local /tmp"
           if private else f"srun says: {seen.stderr.strip()[-300:] or 'not readable there'}")
    return (f"the SLURM lab's nodes cannot read {path}: {why}, so every job would fail with an empty log. "
            "Fix: clone the repository outside /tmp (e.g. under /root or /work) and run the tests there")
