"""A simulator: replays a workload through the real scheduler on simulated clouds.

    appliance-simulate WORKLOAD CONFIG [--seed N] [--plot out.png] [--json]
    python3 -m appliance.simulate ...

It runs the daemon's cycle (observe -> decide -> act -> record) with the real
scheduler.decide() and outcomes.py, a simulated clock, simulated clouds
(clouds.py: boot delays, prices, capacity errors, spot interruptions) and a
simulated HTCondor (engine.py: partitionable slots, negotiation, drains), and
reports makespan, cost, worker-hours, idle time and requeued jobs. Operators use
it to choose shapes, limits and budgets before paying; bench/cost.py uses it to
measure the scheduler. See docs/simulator.md.

The parts: workload.py (reading and exporting workloads), clouds.py (the
simulated clouds and their options), engine.py (the cycle and the simulated
HTCondor), cli.py (the command line). Nothing is imported here, so that
`python3 -m appliance.simulate` can quiet the bindings' warnings first.
"""
