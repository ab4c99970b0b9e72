"""Measured speedups and memory, side by side (`ryot-ray bench ...`)."""


def sequence_text(sequence: int | None) -> str:
    """How a table names the rows a benchmark trained on (`sampled_batches`)."""
    return f"sequence {sequence}" if sequence else "the examples as they are (padded per batch)"
