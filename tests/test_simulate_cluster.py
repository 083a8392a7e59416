"""bench/simulate_cluster.py: N replicas' pure cores over a simulated network converge, and
say so; a smoke test of the harness the 100-node table comes from (issue 23)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from simulate_cluster import Network, Simulation, simulate

from whosthere.tracker.options import TrackerOptions


def test_a_burst_on_every_node_converges_without_a_flap():
    out = simulate(5, 200, topics=10)
    assert out.converged_periods is not None and out.converged_periods <= 5
    assert out.downs == 0
    assert out.idle_msgs_per_node_period > 0  # idle nodes still say they are alive


def test_lost_messages_are_made_up_by_transfers():
    out = simulate(4, 200, topics=10, network=Network(loss=0.1), max_periods=100)
    assert out.converged_periods is not None


def test_a_cut_node_goes_down_and_comes_back_when_healed():
    options = TrackerOptions(broadcast_period=0.2, down_period=1.0)
    sim = Simulation(3, options)
    sim.run_until(1.0)
    sim.nodes["n0"].track(10, 2)
    sim.network.cut = {frozenset(("n0", "n1")), frozenset(("n0", "n2"))}
    sim.run_until(3.0)
    assert sim.nodes["n1"].listed(2) == 0  # n0 is down on n1: its presences left
    assert sim.downs() >= 2
    sim.network.cut = set()
    sim.run_until(6.0)
    assert all(node.listed(2) == 10 for node in sim.nodes.values())


def test_a_busy_node_handles_messages_in_turn_while_its_ticks_go_on_time():
    options = TrackerOptions(broadcast_period=0.2, down_period=1.0)
    sim = Simulation(2, options)
    sim.run_until(1.0)
    busy = sim.nodes["n1"]
    busy.busy_until = sim.now + 3.0  # a long merge, three down_periods
    sim.nodes["n0"].track(10, 2)
    sim.run_until(sim.now + 2.5)
    assert busy.inbox and busy.listed(2) == 0  # n0's heartbeat waits its turn
    assert sim.downs() == 0  # n1's heartbeats went out, n0's counted as they came
    sim.run_until(sim.now + 1.0)
    assert busy.listed(2) == 10 and not busy.inbox


def test_nodes_sharing_cores_take_longer_than_a_core_each():
    alone = simulate(4, 2_000, topics=10)
    shared = simulate(4, 2_000, topics=10, cores=1)
    assert alone.converged_periods is not None and shared.converged_periods is not None
    assert shared.converged_periods >= alone.converged_periods
    assert shared.downs == 0
