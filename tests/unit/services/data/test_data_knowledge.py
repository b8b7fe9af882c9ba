"""The shipped knowledge files load with rollout's reader and cover every key the data layer writes."""

from __future__ import annotations

from pathlib import Path

from rollout.knowledge import load_knowledge
from services.data.converters.common import slug
from services.data.converters.nih import PHRASES
from services.data.synth.generate import TASK_KNOWLEDGE
from services.data.synth.lesions import FINDINGS, knowledge_key

KNOWLEDGE = Path(__file__).resolve().parents[4] / "deploy" / "knowledge"
VINDR = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
         "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration",
         "Lung cavity", "Lung cyst",
         "Lung Opacity", "Mediastinal shift", "Nodule/Mass", "Other lesion", "Pleural effusion",
         "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture"]  # the 22 local labels
MS_CXR = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion",
          "Pneumonia", "Pneumothorax"]


def test_every_key_the_data_layer_writes_is_known() -> None:
    kb = load_knowledge(KNOWLEDGE)
    wanted = {knowledge_key(f) for f in FINDINGS} | {TASK_KNOWLEDGE, "cxr/pneumonia"}
    wanted |= {f"cxr/{slug(p)}" for p in PHRASES.values()}
    wanted |= {f"cxr/{slug(c)}" for c in VINDR + MS_CXR}
    assert wanted <= set(kb.entries), sorted(wanted - set(kb.entries))
    assert {"ct/lung-nodule", "mr/brain-tumor", "us/thyroid-nodule", "derm/melanoma"} <= set(kb.entries)
    for key, entry in kb.entries.items():
        assert key == key.lower() and entry.appearance.endswith(".") and not entry.location.endswith(".")
    assert kb.text("cxr/pneumothorax").startswith("pneumothorax on chest x-ray: A dark region")
