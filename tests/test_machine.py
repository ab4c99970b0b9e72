from pathlib import Path

import pytest

from ryot_ray.machine import ISA_FEATURES, cpu_facts, machine_facts

CPUINFO = Path("/proc/cpuinfo")


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs /proc/cpuinfo")
def test_features_match_this_machine():
    flags = set()
    for line in CPUINFO.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    facts = cpu_facts()
    assert set(facts["isa_features"]) == {f for f in ISA_FEATURES if f in flags}
    model = next(line for line in CPUINFO.read_text().splitlines() if line.startswith("model name"))
    assert facts["model"] == model.split(":", 1)[1].strip()


def test_signature_is_stable_and_facts_complete():
    first, second = cpu_facts(), cpu_facts()
    assert first["signature"] == second["signature"] and len(first["signature"]) == 16
    facts = machine_facts()
    assert facts["torch_threads"] >= 1
    assert set(facts["versions"]) >= {"python", "torch", "ray", "transformers"}
