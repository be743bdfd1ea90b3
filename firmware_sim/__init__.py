"""Simulated sensor fleet for fallwatch: wearables and room sensors in homes, with ground truth.

See docs/simulator.md. Entry points: ``firmware_sim.scenario`` (load_scenario, demo_scenario),
``firmware_sim.fleet.Fleet``, ``fallwatch sim ...`` (``firmware_sim.cli``).
"""
