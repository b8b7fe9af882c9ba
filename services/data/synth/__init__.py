"""Synthetic chest-radiograph phantoms with findings, boxes and phrases (numpy + PIL, seeded)."""

from services.data.synth.generate import PRESETS, SynthSpec, make_spec, synth_image, write_dataset

__all__ = ["PRESETS", "SynthSpec", "make_spec", "synth_image", "write_dataset"]
