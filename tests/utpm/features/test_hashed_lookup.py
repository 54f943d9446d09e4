"""Vocabulary lookups through the compiled hash table: the dict's ids, in any process."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np

from utpm.features import hashed_lookup
from utpm.features.vocab import HASHED_MIN_TOKENS, OOV_TOKEN, PAD_TOKEN, Vocabulary


def _large() -> Vocabulary:
    return Vocabulary([PAD_TOKEN, OOV_TOKEN] + [f"tag {i}" for i in range(HASHED_MIN_TOKENS)])


def test_a_large_vocabulary_gives_the_dicts_ids_for_known_unknown_and_special_values() -> None:
    vocab = _large()
    values = [*vocab.tokens, "never seen", "", "tag -1", *vocab.tokens[::-7]]
    want = np.asarray([vocab.lookup.get(v, Vocabulary.OOV) for v in values])
    got = vocab.ids_of(iter(values), len(values))
    assert vocab._hashed is not None  # the table answered, not the dict
    np.testing.assert_array_equal(got, want)
    assert got[0] == Vocabulary.OOV and got[1] == Vocabulary.OOV  # the padding token is no value


def test_a_small_vocabulary_keeps_the_dict() -> None:
    vocab = Vocabulary.build(["a", "b", "a"])
    np.testing.assert_array_equal(vocab.ids_of(["a", "b", "c"], 3), [2, 3, Vocabulary.OOV])
    assert vocab._hashed is None


def test_tokens_that_share_a_hash_are_decided_by_the_dict() -> None:
    hashes = np.asarray([5, 21, 5, 37], np.int64)  # tokens 0 and 2 collide, and 5, 21, 37 share a slot
    keys, slot_ids = hashed_lookup._build(hashes, np.asarray([10, 11, 12, 13], np.int64), 16)
    out = np.empty(5, np.int64)
    hashed_lookup._probe(keys, slot_ids, np.asarray([5, 21, 37, 53, 4], np.int64), 1, out)
    assert out.tolist() == [hashed_lookup.AMBIGUOUS, 11, 13, 1, 1]


def test_a_pickled_vocabulary_rebuilds_its_table_in_a_process_with_another_hash_key() -> None:
    vocab = _large()
    vocab.ids_of(["tag 3"], 1)  # the table exists here; it must not travel
    blob = pickle.dumps(vocab)
    assert pickle.loads(blob)._hashed is None
    code = (
        "import pickle, sys; v = pickle.loads(sys.stdin.buffer.read()); "
        "print(v.ids_of(['tag 3', 'tag 60000', 'nope'], 3).tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True, env=env)
    assert out.stdout.decode().strip() == str([vocab.lookup["tag 3"], vocab.lookup["tag 60000"], Vocabulary.OOV])


def test_an_empty_lookup_builds_the_table_so_that_a_service_can_do_it_before_its_first_request() -> None:
    vocab = _large()
    assert vocab.ids_of((), 0).shape == (0,) and vocab._hashed is not None


def test_compile_kernel_compiles_the_signatures_a_large_vocabulary_uses() -> None:
    """The images run `compile_kernel` at build: a real lookup must then find its compiled versions."""
    from utpm.features.history import compile_kernel

    compile_kernel()
    counts = len(hashed_lookup._build.signatures), len(hashed_lookup._probe.signatures)
    _large().ids_of(["tag 1", "nope"], 2)
    assert (len(hashed_lookup._build.signatures), len(hashed_lookup._probe.signatures)) == counts == (1, 1)
