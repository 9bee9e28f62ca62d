"""llm-bridge init's parts that need no cluster: sinfo's GPU field, the compute node's answers, and the example's
text edited value by value into a team.yaml that passes check. init on the SLURM lab: tests/test_slurm_chain.py."""

import pytest
import yaml

from llm_bridge.login import init
from llm_bridge.login.validate import validate


@pytest.mark.parametrize("gres, expected", [
    ("gpu:h100:8(S:0-1)", (8, "h100")), ("gpu:8", (8, None)), ("(null)", (0, None)),
    ("shard:4,gpu:H200:4", (4, "h200")),
])
def test_gpus_and_their_type_from_sinfo(gres, expected):
    assert init.parse_gres(gres) == expected


def test_the_compute_node_s_answers():
    text = ("route=enp25s0np0\nhca=mlx5_0|4: ACTIVE|Ethernet|3\nhca=mlx5_1|1: DOWN|Ethernet|3\n"
            "hca=mlx5_2|4: ACTIVE|InfiniBand|\ngpu_mib=81559\n")
    assert init.parse_probe(text) == {"socket_ifname": "enp25s0np0", "gpu_mib": 81559,
                                      "hcas": [("mlx5_0", "Ethernet", "3"), ("mlx5_2", "InfiniBand", "")]}


def cluster(**changes) -> init.Cluster:
    values = dict(partition="gpu-team7", nodes=2, gpus_per_node=4, gpu_type="h100", cpus=96, memory_mib=1024000,
                  time_limit="2-00:00:00", socket_ifname="ens3", ib_hca=["mlx5_0", "mlx5_1"], ib_gid_index=3,
                  gpu_memory_gib=79.65, sources={"gpu_memory_gib": "nvidia-smi"})
    return init.Cluster(**{**values, **changes})


def test_the_example_becomes_the_cluster_s_team_yaml(tmp_path):
    text = init.team_yaml(cluster(), "team7", "team7-org", tmp_path / "share")
    team = yaml.safe_load(text)
    assert team["slurm"].items() >= {"partition": "gpu-team7", "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 96,
                                     "host_memory_gib": 1000, "gpu_memory_gib": 79.65, "time_limit": "2-00:00:00"}.items()
    assert "nodelist" not in team["slurm"]
    assert (team["network"]["socket_ifname"], team["network"]["ib_hca"], team["network"]["ib_gid_index"]) == \
        ("ens3", ["mlx5_0", "mlx5_1"], 3)
    assert team["paths"]["logs"] == str(tmp_path / "share" / "logs")
    assert (team["wandb"]["entity"], team["huggingface"]["org"]) == ("team7", "team7-org")
    assert "# one node's memory, GiB (sinfo)" in text and "# the env README_install_conda.md creates" in text
    (tmp_path / "share" / "logs").mkdir(parents=True)
    path = tmp_path / "team.yaml"
    path.write_text(text)
    config, problems = validate(path)
    assert config is not None and [p for p in problems if p.severity == "error"] == [], problems


def test_a_cluster_without_infiniband_or_a_default_route_leaves_those_to_nccl(tmp_path):
    team = yaml.safe_load(init.team_yaml(cluster(socket_ifname=None, ib_hca=[], ib_gid_index=None, time_limit=None),
                                         "t", "o", tmp_path))
    assert team["network"]["ib_hca"] == [] and "socket_ifname" not in team["network"] and "ib_gid_index" not in team["network"]
    assert team["slurm"]["time_limit"] == "1-00:00:00"  # an unlimited partition: the example's day


def test_init_never_replaces_a_file(tmp_path):
    out = tmp_path / "team.yaml"
    out.write_text("mine")
    with pytest.raises(init.InitError, match="init never replaces"):
        init.init(out, None, "t", "o", tmp_path, probe=False)
    assert out.read_text() == "mine"
