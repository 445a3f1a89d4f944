"""`dist-train slurm submit --dry-run`: the rendered sbatch script (no SLURM
daemons needed for rendering; submitting to a real SLURM is another test)."""

import subprocess
import sys

from tests.conftest import REPO


def submit(*args):
    return subprocess.run([sys.executable, "-m", "launcher", "slurm", "submit", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_single_node_gpu_script():
    proc = submit("configs/quickstart.yaml", "optim.lr=0.01", "--gpus-per-node", "4", "--time", "02:00:00",
                  "--partition", "gpu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=02:00:00", "#SBATCH --partition=gpu", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --requeue", "#SBATCH --job-name=quickstart"):
        assert line in script
    assert f"srun dist-train run {REPO}/configs/quickstart.yaml optim.lr=0.01 &" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script and "{{" not in script


def test_multi_node_script_runs_the_launcher_once_per_node():
    proc = submit("configs/quickstart.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --nodes=2" in proc.stdout and "#SBATCH --ntasks-per-node=1" in proc.stdout
    assert "#SBATCH --gpus-per-node=8" in proc.stdout and "#SBATCH --cpus-per-task=8" in proc.stdout
    assert "srun --ntasks-per-node=1 --cpus-per-task=8" in proc.stdout
    assert 'dist-train launch --nnodes "$SLURM_NNODES" --nproc-per-node 8' in proc.stdout
    assert '--rdzv-endpoint "$head_node:$port"' in proc.stdout
    assert "#SBATCH --partition" not in proc.stdout  # the cluster's default partition
    assert 'trap \'scancel --signal=USR1 "$SLURM_JOB_ID"\' USR1' in proc.stdout  # dist-train launch survives USR1


def test_multi_node_cpu_script_spreads_ntasks_over_the_nodes():
    proc = submit("configs/cpu_test.yaml", "--nodes", "2", "--ntasks", "4", "--cpus-per-task", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --nodes=2" in proc.stdout and "--gpus-per-node" not in proc.stdout
    assert "#SBATCH --cpus-per-task=4" in proc.stdout and "export OMP_NUM_THREADS=2" in proc.stdout
    assert "--nproc-per-node 2" in proc.stdout and "{{" not in proc.stdout


def test_cpu_script_and_config_checked_before_rendering():
    proc = submit("configs/cpu_test.yaml", "--ntasks", "2", "--dry-run")
    assert proc.returncode == 0 and "#SBATCH --ntasks=2" in proc.stdout and "dist.device=cpu" in proc.stdout
    bad = submit("configs/cpu_test.yaml", "--ntasks", "3", "--dry-run")  # global batch 32 over 3 workers
    assert bad.returncode == 2 and "not divisible by 3 worker(s)" in bad.stderr
    nodes = submit("configs/cpu_test.yaml", "--nodes", "2", "--ntasks", "3", "--dry-run")
    assert nodes.returncode == 2 and "does not spread evenly over --nodes 2" in nodes.stderr
