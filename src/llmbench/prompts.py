"""Seeded prompt generation: templates x topics x target token lengths (buckets), chat and plain
variants. Pure: the same seed, sizes and token counter give byte-identical records."""
from __future__ import annotations

import random
from typing import Callable, Iterable

from llmbench.io import sha256_text

TOPICS = ("photosynthesis", "the water cycle", "compound interest", "volcanoes", "the printing press",
          "bicycle gears", "vaccines", "tides", "recycling plastics", "the human heart",
          "solar panels", "coffee brewing", "bridges", "honeybees", "the internet", "glaciers")

# {topic} is filled in; the chat variant is sent through the model's chat template as a user turn
TEMPLATES = {
    "explain": "Explain {topic} to a curious twelve-year-old.",
    "summarize": "Write a short summary of the key facts about {topic}.",
    "list": "List three surprising facts about {topic}.",
    "compare": "Compare {topic} with something from everyday life.",
}

# context sentences pad a prompt to its bucket's length with on-topic, deterministic text
CONTEXT = ("Here are some notes about {topic}.", "People often ask how {topic} works in practice.",
           "Many textbooks describe {topic} in several steps.", "Some details about {topic} are "
           "easy to misunderstand.", "Teachers like to use {topic} as an example in class.",
           "There is a long history behind {topic}.", "Scientists still study {topic} today.",
           "A good answer about {topic} is clear and short.")


def _build(rng: random.Random, topic: str, template: str, target: int, count: Callable[[str], int]) -> str:
    ask = TEMPLATES[template].format(topic=topic)
    context: list[str] = []
    while count(" ".join(context + [ask])) < target:
        context.append(rng.choice(CONTEXT).format(topic=topic))
    words = " ".join(context).split()
    # trim word by word so the prompt lands just at or under the target
    while words and count(" ".join(words + [ask])) > target:
        words.pop()
    return " ".join(words + [ask])


def generate(seed: int, n: int, buckets: Iterable[int], variants: Iterable[str],
             count_tokens: Callable[[str], int]) -> list[dict]:
    rng = random.Random(seed)
    buckets, variants = list(buckets), list(variants)
    rows = []
    for i in range(n):
        bucket = buckets[i % len(buckets)]
        variant = variants[(i // len(buckets)) % len(variants)]
        topic = rng.choice(TOPICS)
        template = rng.choice(sorted(TEMPLATES))
        text = _build(rng, topic, template, bucket, count_tokens)
        rows.append({"id": f"p{i:04d}", "bucket": bucket, "variant": variant, "template": template,
                     "topic": topic, "n_tokens": count_tokens(text), "text": text,
                     "sha256": sha256_text(text)})
    return rows
