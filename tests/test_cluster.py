"""rayopt on a multi-node Ray cluster: placement, attaching from the CLI, and losing a
worker node mid-run; and the launch configs in cluster/.

The cluster is made on this machine with ``ray.cluster_utils.Cluster``: a head raylet
with no CPUs (the driver, islands and mutators) and worker raylets offering one CPU and
the custom resource ``evaluator`` (the stand-in for a GPU node's label). The module's
fixture shuts down any Ray connection this process already has (a session's local
instance does not survive) and gives its cluster a private ``RAY_TMPDIR``, so a plain
``ray.init()`` elsewhere on the machine never attaches to it; it checks on the way out
that none of the cluster's processes is left.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml
from conftest import check_exactly_once, tiny_discovery

from rayopt.config import dump, load_discovery
from rayopt.results.journal import read
from rayopt.search.mutators.config import LLMConfig

ROOT = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/home/ray/rayopt"  # where cluster/Dockerfile copies the repository
# Child processes import rayopt from the checkout and the test helpers from tests/.
CHILD_PYTHONPATH = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
MiB = 2**20
# Node deaths are noticed in ~1 s instead of ~15 s (GCS health checks).
FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
HEAD = dict(
    num_cpus=0, include_dashboard=False, object_store_memory=100 * MiB, _system_config=FAST_HEALTH
)
WORKER = dict(num_cpus=1, resources={"evaluator": 1}, object_store_memory=100 * MiB)
LABELLED = {"evaluator.resources": {"evaluator": 1}}


# ------------------------------------------------------------------ launch configs
def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_configs(name):
    (cfg,) = _yaml_docs(ROOT / "cluster" / name)
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in cfg, f"{name}: {key} missing"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "evaluator" not in head["resources"]
    gpu = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert gpu and all(
        t["resources"]["GPU"] >= 1 and t["resources"]["evaluator"] == t["resources"]["GPU"]
        for t in gpu
    ), "GPU workers offer one evaluator slot per GPU"
    for t in types.values():
        assert {"node_config", "resources", "min_workers", "max_workers"} <= set(t)
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
        # node_config is the cloud's insert body: GCP's Instance.scheduling is an object
        if "scheduling" in t["node_config"]:
            assert isinstance(t["node_config"]["scheduling"], dict), t["node_config"]
    assert any("rayopt[gpu]" in c for c in cfg["setup_commands"])
    # the checkout is synced without .venv, runs/ and build/ (what git ignores)
    assert "." in cfg["file_mounts"].values() and ".gitignore" in cfg["rsync_filter"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start" in c and "--address" in c for c in cfg["worker_start_ray_commands"])
    text = (ROOT / "cluster" / name).read_text()
    # a key is only ever fetched at start-up from a secret store, never written here
    assigned = re.findall(r"API_KEY=\"?(.{2})", text)
    assert "sk-" not in text and assigned and set(assigned) == {"$("}, assigned


def _volumes_defined_in_file(docs: list[dict], pod_specs: list[dict], what: str) -> None:
    """Every PVC and ConfigMap a pod mounts is a document of the same file."""
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for pod in pod_specs:
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in defined, f"{what}: PVC {claim}"
            if "configMap" in vol:
                name = vol["configMap"]["name"]
                assert ("ConfigMap", name) in defined, f"{what}: ConfigMap {name}"


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]


def _assert_budget_enforced(cfg, what: str) -> None:
    """An LLM budget counts only priced calls: both roles' models need a price."""
    if cfg.mutator.kind != "llm":
        return
    llm = LLMConfig.from_dict(cfg.mutator.llm, where=f"{what}: mutator.llm")
    if llm.budget_usd is not None:
        for role in (llm.thinker, llm.coder):
            assert role.model in llm.price_table, f"{what}: no price for {role.model}"


def test_kuberay_manifests():
    rc_docs = _yaml_docs(ROOT / "cluster" / "kuberay-raycluster.yaml")
    job_docs = _yaml_docs(ROOT / "cluster" / "kuberay-rayjob.yaml")
    rc = next(d for d in rc_docs if d["kind"] == "RayCluster")
    job = next(d for d in job_docs if d["kind"] == "RayJob")
    _volumes_defined_in_file(rc_docs, _pod_specs(rc["spec"]), "RayCluster")
    _volumes_defined_in_file(job_docs, _pod_specs(job["spec"]["rayClusterSpec"]), "RayJob")
    gpus_total = {}
    for spec, what in ((rc["spec"], "RayCluster"), (job["spec"]["rayClusterSpec"], "RayJob")):
        assert rc["apiVersion"] == job["apiVersion"] == "ray.io/v1"
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{what}: head runs no evaluator"
        head_env = head["template"]["spec"]["containers"][0]["env"]
        assert any(e.get("valueFrom", {}).get("secretKeyRef") for e in head_env), (
            f"{what}: API keys come from a Secret as env"
        )
        (group,) = spec["workerGroupSpecs"]
        container = group["template"]["spec"]["containers"][0]
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        # KubeRay's format for custom resources: a JSON object inside a quoted string
        custom = json.loads(group["rayStartParams"]["resources"].strip('"').replace('\\"', '"'))
        assert gpus >= 1 and custom == {"evaluator": gpus}, "one evaluator slot per GPU"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        gpus_total[what] = group["replicas"] * gpus
    # the job's cluster is deleted soon after the run, not left holding GPUs for an hour
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert 0 <= job["spec"]["ttlSecondsAfterFinished"] <= 120
    # The entrypoint: resume the run on the PVC if it exists, else the discovery config
    # baked into the image (no copy of it in the manifest), sized by key=value overrides.
    (script,) = shlex.split(job["spec"]["entrypoint"])[2:]
    commands = [shlex.split(c) for c in re.findall(r"rayopt discover[^;]*", script)]
    assert len(commands) == 2, script
    resume, new = sorted(commands, key=lambda c: "--resume" not in c)
    assert resume[resume.index("--address") + 1] == new[new.index("--address") + 1] == "auto"
    assert resume[resume.index("--resume") + 1] == new[new.index("--run-dir") + 1]
    assert f"-d {resume[resume.index('--resume') + 1]}/journal" in script
    config = new[new.index("--config") + 1]
    assert config.startswith(IMAGE_ROOT + "/"), config
    flags = {"--config", "--address", "--run-dir"}
    overrides = [a for i, a in enumerate(new[2:], 2) if a not in flags and new[i - 1] not in flags]
    assert overrides and all("=" in o for o in overrides), new
    cfg = load_discovery(ROOT / config[len(IMAGE_ROOT) + 1 :], overrides)
    assert cfg.evaluator.resources == {"evaluator": 1.0} and cfg.evaluator.num_gpus == 1
    assert cfg.evaluator.count == gpus_total["RayJob"], "one evaluator per GPU of the job"
    _assert_budget_enforced(cfg, "RayJob")
    # the image holds the repository there, without environments or runs
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(rf"^COPY .*\. {IMAGE_ROOT}$", dockerfile, re.M), dockerfile
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".venv", ".git", "runs", "build", "**/__pycache__", "*.egg-info"} <= ignored
    assert not ignored & {"rayopt", "configs", "cluster", "pyproject.toml"}


def _shell_commands(text: str) -> list[str]:
    """The script's command lines: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", text)
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def test_slurm_script():
    path = ROOT / "cluster" / "slurm.sbatch"
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "#SBATCH --gpus-per-node" in text
    lines = _shell_commands(text)
    # every Ray node is an srun step holding the task's CPUs (srun no longer inherits
    # --cpus-per-task from sbatch, Slurm >= 22.05), kept alive with --block
    starts = [ln for ln in lines if "ray start" in ln]
    assert len(starts) == 2 and any("ray start --head" in ln for ln in starts), starts
    for ln in starts:
        assert re.match(r'srun .*--cpus-per-task="\$CPUS" .*ray start .*--block', ln), ln
    worker = next(ln for ln in starts if "--head" not in ln)
    assert '--address="$ADDRESS"' in worker, worker
    # the driver attaches to this allocation's cluster, new or resumed
    discover = [ln for ln in lines if ln.startswith("rayopt discover")]
    assert len(discover) == 2, discover
    for ln in discover:
        assert re.search(r'^rayopt discover .*--address "\$ADDRESS"', ln), ln
    (new,) = [ln for ln in discover if "--config" in ln]
    # one evaluator per GPU of the allocation, counted from SLURM, not once from Ray
    assert "evaluator.count=$((SLURM_JOB_NUM_NODES * GPUS))" in new, new
    assert any(ln.startswith("GPUS=${SLURM_GPUS_ON_NODE") for ln in lines)


def test_cluster_discovery_configs_load():
    paths = sorted((ROOT / "cluster").glob("*.discovery.yaml"))
    assert paths
    for path in paths:
        cfg = load_discovery(path)
        assert cfg.evaluator.resources, path
        # lineages sized by the driver to the evaluators (and run_ahead), not fixed
        assert cfg.search.lineages_per_island == 0 and cfg.evaluator.run_ahead > 0, path
        _assert_budget_enforced(cfg, str(path))


# ------------------------------------------------------------------ the cluster
def _cluster_processes(tag: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if tag in ln and "ps -eo" not in ln]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Unix socket paths are capped
    # One auth mode for the cluster and every driver: left unset, a driver that finds a
    # ~/.ray/auth_token turns token auth on, and a cluster without it then destroys
    # that driver's actors as "out of scope" (cluster/README.md, troubleshooting).
    env = {"RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    head_args = {**HEAD, "ray_client_server_port": _free_port()}
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args=head_args)
        for _ in range(2):
            c.add_node(**WORKER)
        ray.init(address=c.address, log_to_driver=False, configure_logging=False)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        deadline = time.time() + 30
        while _cluster_processes(tmp) and time.time() < deadline:
            time.sleep(0.5)
        left = _cluster_processes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, "cluster processes left behind:\n" + "\n".join(left)


def _workers(c) -> set[str]:
    return {n.node_id for n in c.worker_nodes}


def test_placement_evaluators_on_workers_islands_on_driver_node(cluster):
    from rayopt.search.fleet import control_options, start_evaluators
    from rayopt.search.island import IslandActor
    from rayopt.search.mutators.actor import MutatorActor

    head = cluster.head_node.node_id
    assert ray.get_runtime_context().get_node_id() == head
    fleet = start_evaluators(tiny_discovery(**LABELLED))
    try:
        assert len(fleet) == 2 and fleet.placement_group is None  # one per evaluator slot
        islands = [
            IslandActor.options(**control_options()).remote(0, i, ["CartPole-v1"]) for i in range(3)
        ]
        mutator = MutatorActor.options(**control_options()).remote("offline", {})
        where = ray.get([i.node.remote() for i in islands])
        where.append(
            ray.get(
                mutator.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
            )
        )
        assert set(where) == {head}
        nodes = [info["node"] for info in ray.get([a.info.remote() for a in fleet], timeout=120)]
        assert set(nodes) == _workers(cluster), "one evaluator on each labelled worker"
        # the control plane took none of the evaluators' resources
        assert ray.available_resources().get("evaluator", 0) == 0
        for a in (*islands, mutator):
            ray.kill(a)
    finally:
        fleet.stop()
    _wait_resources("evaluator", 2)


def _wait_resources(key: str, amount: float, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while ray.available_resources().get(key, 0) < amount and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get(key, 0) == amount


def test_placement_group_strategies(cluster):
    from rayopt.search.fleet import start_evaluators

    strict = {"evaluator.placement_group": "STRICT_SPREAD"}
    fleet = start_evaluators(tiny_discovery(**LABELLED, **strict))
    try:
        assert fleet.placement_group is not None
        table = ray.util.placement_group_table(fleet.placement_group)
        assert table["strategy"] == "STRICT_SPREAD" and len(table["bundles"]) == 2
        assert set(table["bundles_to_node_id"].values()) == _workers(cluster)
        nodes = [info["node"] for info in ray.get([a.info.remote() for a in fleet], timeout=120)]
        assert sorted(nodes) == sorted(table["bundles_to_node_id"].values())
    finally:
        fleet.stop()
    _wait_resources("evaluator", 2)
    # three evaluators on distinct nodes do not fit on two: a clear error, nothing held
    with pytest.raises(RuntimeError, match="not placed within 2 s"):
        start_evaluators(
            tiny_discovery(
                **LABELLED, **strict, **{"evaluator.count": 3, "evaluator.placement_timeout_s": 2}
            )
        )
    _wait_resources("evaluator", 2)
    with pytest.raises(RuntimeError, match="no evaluator fits"):
        start_evaluators(tiny_discovery(**{"evaluator.resources": {"tpu_pod": 1}}))


def _actors(c, cls: str, skip_job: str) -> list[dict]:
    return [
        a
        for a in c.global_state.actor_table(None).values()
        if a["ActorClassName"] == cls and a["JobID"] != skip_job
    ]


def test_cli_attaches_and_survives_losing_a_worker_node(cluster, tmp_path):
    """``rayopt discover --address auto`` on the cluster; a worker node dies while its
    evaluator is busy and a replacement joins: the run completes exactly once, the lost
    evaluation retried on the evaluator Ray restarted on the new node, the journal whole
    on the driver's disk."""
    config = tiny_discovery(**LABELLED, **{"islands.count": 1, "cascade.enabled": False})
    path = tmp_path / "config.yaml"
    path.write_text(dump(config))
    run_dir = tmp_path / "run"
    victim, survivor = sorted(cluster.worker_nodes, key=lambda n: n.node_id)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rayopt",
            "discover",
            "--config",
            str(path),
            "--run-dir",
            str(run_dir),
            "--address",
            "auto",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH},
    )
    try:
        removed_at = None
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                df = read(run_dir, columns=["row_type", "node"]).to_pandas()
            except (FileNotFoundError, OSError):
                continue
            if (df[df.row_type == "evaluation"].node == victim.node_id).any():
                # its evaluator finished one evaluation and took the next queued one
                cluster.remove_node(victim, allow_graceful=False)
                removed_at = time.time()
                break
        if removed_at is None:
            if proc.poll() is None:
                proc.kill()
            out = proc.communicate()[0]
            pytest.fail(f"the victim node never ran an evaluation:\n{out[-4000:]}")
        time.sleep(2.0)  # a while with one node short, then the replacement arrives
        replacement = cluster.add_node(**WORKER)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-4000:]
    assert "ray: 3 node(s)" in out  # attached to this cluster, not a new local instance

    df = read(run_dir).to_pandas()
    check_exactly_once(df, config)
    evals = df[df.row_type == "evaluation"]
    assert (evals.status != "failed").all(), evals[evals.status == "failed"].error.tolist()
    workers = {victim.node_id, survivor.node_id, replacement.node_id}
    assert set(evals.node) <= workers and cluster.head_node.node_id not in set(evals.node)
    assert replacement.node_id in set(evals.node), "the restarted evaluator ran on the new node"
    retried = evals[evals.attempt > 1]
    assert len(retried) >= 1, "the evaluation lost with the node was retried"
    assert (retried.node == replacement.node_id).all(), "... on the restarted evaluator"

    me = ray.get_runtime_context().get_job_id()
    evaluators = _actors(cluster, "EvaluatorActor", me)
    assert len(evaluators) == 2 and sum(a["NumRestarts"] for a in evaluators) == 1
    control = _actors(cluster, "IslandActor", me) + _actors(cluster, "MutatorActor", me)
    assert len(control) == 2
    assert {a["Address"]["NodeID"] for a in control} == {cluster.head_node.node_id}


CLIENT_SCRIPT = """
import asyncio, json, sys
import ray
from rayopt.optim import resolve
from rayopt.rl.ppo import config_for
from rayopt.search.fleet import control_options, init_ray, start_evaluators
from rayopt.search.evaluator import EvalTask, EvaluatorPool
from rayopt.search.island import IslandActor
from conftest import tiny_discovery

init_ray(sys.argv[1])
fleet = start_evaluators(tiny_discovery(**{"evaluator.resources": {"evaluator": 1}}))
island = IslandActor.options(**control_options()).remote(0, 0, ["CartPole-v1"])
cfg = config_for("CartPole-v1", num_envs=4, num_steps=16, num_minibatches=2, total_timesteps=128)
task = EvalTask("t", resolve("adam"), cfg, (0,), fast_compile=True)
out = asyncio.run(EvaluatorPool(list(fleet)).run(task))
print("RESULT", json.dumps(dict(
    client=ray.util.client.ray.is_connected(), driver=ray.get_runtime_context().get_node_id(),
    island=ray.get(island.node.remote()), evaluators=len(fleet), ok=out.ok, node=out.node,
    final_return=float(out.final_return[0]))))
fleet.stop()
"""


def test_ray_client_driver(cluster):
    """A driver outside the cluster (``--address ray://head:port``): the evaluator pool's
    asyncio calls, evaluator placement and the control plane on the head all work."""
    port = cluster.head_node._ray_params.ray_client_server_port
    address = f"ray://{cluster.head_node.node_ip_address}:{port}"
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": CHILD_PYTHONPATH},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    got = json.loads(line[len("RESULT ") :])
    head = cluster.head_node.node_id
    assert got["client"] and got["driver"] == head and got["island"] == head
    assert got["evaluators"] == 2 and got["ok"] and got["node"] in _workers(cluster)
    assert got["final_return"] > 0
