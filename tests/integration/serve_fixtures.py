"""Helpers of the Serve integration tests: a tiny model taught to answer one fixed box, test images and a
DICOM file. Not collected (no test_ prefix).

A random tiny model almost never writes a parsable box, and then the frame conversion goes untested; so the
fixture fine-tunes it (plain SFT, full weights, a few seconds) to answer ANSWER whatever the image, as a
trained policy would answer in its own convention (input pixels for Qwen2.5-VL).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ["left", "right", "upper", "lower", "lobe", "nodule", "mass", "effusion", "pleural", "opacity", "the",
         "finding", "lesion", "apex", "base", "consolidation"]
ANSWER = '<think>Locate the finding in the image.</think><answer>{"bbox_2d": [14, 21, 42, 49]}</answer>'


def teach_fixed_answer(model_dir: Path, out: Path, steps: int = 360, seed: int = 0) -> Path:
    """Copy `model_dir` to `out` with weights fine-tuned so greedy decoding answers ANSWER."""
    import torch
    from transformers import AutoModelForImageTextToText

    from rollout.contracts import RolloutRequest
    from rollout.images import convention_of, family_of
    from rollout.processing import PromptProcessor
    from rollout.prompts import build_prompt

    shutil.copytree(model_dir, out)
    family = family_of(model_dir)
    processor = PromptProcessor(model_dir, family, 56 * 56, 112 * 112)
    tokenizer = processor.tokenizer
    answer_ids = [*tokenizer(ANSWER, add_special_tokens=False)["input_ids"],
                  tokenizer.convert_tokens_to_ids("<|im_end|>")]
    rng = np.random.default_rng(seed)

    def example(i: int) -> dict[str, torch.Tensor]:
        """A fresh prompt: random size, noise or a smooth grey ramp (what a windowed DICOM becomes), and a
        phrase of random words, so the answer cannot hinge on any one input."""
        size = (int(rng.integers(48, 320)), int(rng.integers(48, 320)))
        picture = random_image(size, i) if rng.random() < 0.5 else ramp_image(size, i)
        phrase = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 5))))
        req = RolloutRequest(prompt_id=str(i), image=picture, question=phrase)
        prepared = processor.prepare(build_prompt(req, convention_of(family), None, False))
        ids = np.concatenate([prepared.prompt_token_ids, np.asarray(answer_ids)])
        labels = np.full_like(ids, -100)
        labels[len(prepared.prompt_token_ids):] = answer_ids
        mm = np.concatenate([prepared.mm_token_type_ids, np.zeros(len(answer_ids), dtype=np.int64)])
        return {"input_ids": torch.tensor(ids)[None], "labels": torch.tensor(labels)[None],
                "mm_token_type_ids": torch.tensor(mm)[None],
                "pixel_values": torch.tensor(prepared.pixel_values),
                "image_grid_thw": torch.tensor(prepared.image_grid_thw)}

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        loss = model(**example(step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():  # prompts it has never seen
        worst = max(float(model(**example(steps + i)).loss) for i in range(8))
    if worst > 0.05:
        raise RuntimeError(f"the fixed-answer model did not converge (worst loss {worst:.3f}); raise steps")
    model.save_pretrained(out, safe_serialization=True)
    return out


def random_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))


def ramp_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth grey ramp in a seeded direction: the kind of image a windowed DICOM becomes."""
    angle = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    ramp = np.cos(angle) * xx / size[0] + np.sin(angle) * yy / size[1]
    grey = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6) * 255).astype("uint8")
    return Image.fromarray(grey).convert("RGB")


def png_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    out = io.BytesIO()
    random_image(size, seed).save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    out = io.BytesIO()
    random_image(size, seed).save(out, "JPEG")
    return out.getvalue()


def dicom_bytes(width: int, height: int, with_pixels: bool = True, monochrome1: bool = False) -> bytes:
    """A 16-bit CR DICOM (Part 10, explicit VR little endian) with a window, built with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "SYNTHETIC"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if with_pixels:
        yy, xx = np.mgrid[0:height, 0:width]
        ds.PixelData = ((xx * 4095 // max(width - 1, 1) + yy) % 4096).astype(np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
