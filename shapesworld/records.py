"""JSON records of scenes: the ground truth that ``python -m shapesworld render`` writes to
``scenes.json`` (everything but the pixels)."""

from __future__ import annotations

from shapesworld.questions import scene_questions
from shapesworld.scenes import Scene


def scene_record(scene: Scene) -> dict[str, object]:
    """JSON-ready ground truth of a scene and its questions.

    Keys: seed, width, height, objects (shape, color, size, box xyxy raw-image pixels, class_id,
    attribute_id), questions (text, answer, kind; see ``questions.scene_questions``).
    """
    return {
        "seed": scene.seed,
        "width": scene.width,
        "height": scene.height,
        "objects": [
            {
                "shape": o.shape,
                "color": o.color,
                "size": o.size,
                "box": list(o.box),
                "class_id": o.class_id,
                "attribute_id": o.attribute_id,
            }
            for o in scene.objects
        ],
        "questions": [
            {"text": q.text, "answer": q.answer, "kind": q.kind} for q in scene_questions(scene)
        ],
    }
