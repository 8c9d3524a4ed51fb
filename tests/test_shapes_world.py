from __future__ import annotations

import numpy as np

from conceptforge.shapes.world import COLORS, SHAPES, sample_scene, vocabulary


def test_world_size_and_determinism():
    assert len(SHAPES) >= 6 and len(COLORS) >= 10
    a, b = sample_scene(7), sample_scene(7)
    assert a.caption == b.caption
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_masks_partition_the_image():
    for seed in range(30):
        s = sample_scene(seed)
        total = s.background_mask.astype(int) + sum(o.mask.astype(int) for o in s.objects)
        assert np.all(total == 1)
        assert all(o.mask.sum() > 0 for o in s.objects)


def test_caption_names_every_object_and_background():
    s = sample_scene(3, n_objects=2)
    assert len(s.objects) == 2
    words = s.caption.split()
    assert words[-1] == "background" and s.background in words
    for i, obj in enumerate(s.objects):
        owned = [w for w, o in zip(words, s.word_owners) if o == i]
        assert owned == obj.words


def test_two_tone_and_generic_nouns_occur():
    scenes = [sample_scene(s) for s in range(300)]
    assert any(o.second_color for s in scenes for o in s.objects)
    assert any(s.background_second for s in scenes)
    assert any(o.noun in ("shape", "object") for s in scenes for o in s.objects)


def test_tokenizer_has_every_word_as_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from conceptforge.shapes.model import build_tokenizer

    build_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    for word in vocabulary():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
