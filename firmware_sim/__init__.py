"""Simulated sensor fleet for fallwatch: wearables and room sensors in homes, with ground truth.

See docs/simulator.md. Entry points: ``fallwatch.sim.scenario`` (load_scenario, demo_scenario),
``fallwatch.sim.fleet.Fleet``, ``fallwatch sim ...`` (``fallwatch.sim.cli``).
"""
