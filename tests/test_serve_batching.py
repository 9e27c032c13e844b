"""Requests that have nothing in common decoded as one batch (`Engine.answer_batch`, the serve worker):
each row answers as it would alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sage_cli.models.engine import Engine, Prompt
from sage_cli.models.sage import SageModel
from sage_cli.serve.worker import by_length
from test_serve import Running, _ask
from test_serve_asgi import SlowModel, _wait_for
from tiny_models import noise_image as _img
from tiny_models import tiny_composed

FACTS = ["The part is round.", "Its rim is smooth and unbroken."]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(SageModel(tiny_composed(), k_patches=2), "tiny")


def _requests(engine):
    """Two image pairs (one with a reference and facts, one zero-shot: different lengths) and two chats."""
    pairs = [(engine.encode(_img(31), _img(32), FACTS), "Is there a defect?"),
             (engine.encode(_img(33), None, []), "Where exactly is the scratch on the rim?")]
    chats = [[{"role": "user", "content": "Hi"}],
             [{"role": "user", "content": "Describe a hazelnut with a crack in three long sentences."}]]
    return pairs, chats


def test_a_batch_of_unrelated_requests_answers_each_as_alone(engine):
    pairs, chats = _requests(engine)
    prompts = [Prompt(engine.pair_embeds(p, q), q, 12) for p, q in pairs]
    prompts += [Prompt(engine.chat_embeds(m), m[-1]["content"], 12) for m in chats]
    together = engine.answer_batch(prompts)
    alone = [engine.answer(p, q, max_new_tokens=12) for p, q in pairs]
    alone += [engine.chat(m, max_new_tokens=12) for m in chats]
    assert len({p.embeds.shape[0] for p in prompts}) == 4  # every row padded differently
    for t, a in zip(together, alone):
        assert (t.text, t.new_tokens, t.prompt_tokens) == (a.text, a.new_tokens, a.prompt_tokens)
        assert t.p_yes == pytest.approx(a.p_yes, abs=1e-4)


def test_pairs_with_one_reference_prefill_its_part_once_and_answer_as_alone(engine):
    ref, other = _img(61), _img(62)
    pairs = [(engine.encode(_img(63), ref, FACTS), "Is there a defect?"),
             (engine.encode(_img(64), ref, []), "Where is the scratch on the rim of the part?"),
             (engine.encode(_img(65), other, FACTS), "Is there a defect?"),
             (engine.encode(_img(66), None, []), "Is there a defect?")]  # zero-shot: nothing to share
    starts = [engine.shared_start(p) for p, _ in pairs]
    assert starts[0] == starts[1] and starts[0][0] != starts[2][0] and starts[3] is None
    assert 0 < starts[0][1] < pairs[0][0].prefix_tokens
    prompts = [Prompt(engine.pair_embeds(p, q), q, 10, shared=engine.shared_start(p)) for p, q in pairs]
    chat = [{"role": "user", "content": "Hi"}]
    prompts.append(Prompt(engine.chat_embeds(chat), "Hi", 10))
    together = engine.answer_batch(prompts)
    alone = [engine.answer(p, q, max_new_tokens=10) for p, q in pairs] + [engine.chat(chat, max_new_tokens=10)]
    for t, a in zip(together, alone):
        assert (t.text, t.new_tokens, t.prompt_tokens) == (a.text, a.new_tokens, a.prompt_tokens)
        assert t.p_yes == pytest.approx(a.p_yes, abs=1e-4)


def test_pairs_encoded_as_one_batch_give_each_pair_its_own_prefix(engine):
    items = [(_img(51), _img(52), FACTS), (_img(53), _img(54), ["One fact."]), (_img(55), None, []),
             (_img(56), _img(57), [])]
    together = engine.encode_pixels([engine.pixels(t, r) for t, r, _ in items], [f for *_, f in items])
    for (t, r, f), got in zip(items, together):
        alone = engine.encode(t, r, f)
        assert got.prefix_tokens == alone.prefix_tokens
        assert torch.allclose(got.embeds(), alone.embeds(), atol=1e-5)
        if r is not None:
            assert torch.allclose(engine.anomaly(got).map, engine.anomaly(alone).map, atol=1e-5)
            assert engine.anomaly(got).selected == engine.anomaly(alone).selected
        q = "Is there a defect?"
        assert engine.answer(got, q, max_new_tokens=6).text == engine.answer(alone, q, max_new_tokens=6).text


def test_each_row_keeps_its_budget_sampling_and_can_stop_alone(engine):
    (prefix, q), _ = _requests(engine)[0]
    chat = [{"role": "user", "content": "Tell me a story."}]
    stopped: list[str] = []

    def leave_after_two_pieces(text):
        stopped.append(text)
        return len(stopped) < 2  # the client left after its second piece

    prompts = [Prompt(engine.pair_embeds(prefix, q), q, 3),
               Prompt(engine.chat_embeds(chat), "story", 10, temperature=0.9, top_p=0.9,
                      generator=torch.Generator().manual_seed(7)),
               Prompt(engine.chat_embeds(chat), "story", 10, on_text=leave_after_two_pieces)]
    short, sampled, left = engine.answer_batch(prompts)
    assert short.new_tokens <= 3 and short.text == engine.answer(prefix, q, max_new_tokens=3).text
    alone = engine.chat(chat, max_new_tokens=10, temperature=0.9, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert sampled.text == alone.text  # its own generator: the same draws in a batch as alone
    full = engine.chat(chat, max_new_tokens=10)
    assert len(stopped) >= 2 and left.new_tokens < full.new_tokens == 10  # it stopped; alone it runs on


def test_prompts_of_very_different_lengths_go_in_separate_batches_shortest_first():
    class P:
        def __init__(self, n):
            self.tokens = n

    items = [(name, P(n)) for name, n in (("long", 8000), ("a", 260), ("b", 300), ("chat", 20), ("c", 250))]
    groups = [[name for name, _ in g] for g in by_length(items)]
    assert groups == [["chat"], ["c", "a", "b"], ["long"]]


def test_requests_waiting_together_are_decoded_as_one_batch_with_the_answers_they_get_alone(engine, monkeypatch):
    s = Running(engine)
    try:
        asks = [("Is there a defect?", _img(41), _img(42)), ("Where is it?", _img(43)), ("Hi", ), ("What is it?", _img(44))]

        def send(ask):
            q, *images = ask
            r = s.client().chat.completions.create(model="tiny", messages=_ask(q, *images), max_tokens=6)
            return r.choices[0].message.content, (r.model_extra or {}).get("sage")

        alone = [send(a) for a in asks]
        gate = SlowModel(engine, monkeypatch)
        with ThreadPoolExecutor(len(asks) + 1) as pool:
            first = pool.submit(send, asks[0])  # holds the model until released
            assert gate.started.wait(30)
            rest = [pool.submit(send, a) for a in asks]
            _wait_for(lambda: s.server.state.worker.depth == len(asks))
            gate.release.set()
            got = [f.result(timeout=60) for f in rest]
            first.result(timeout=60)
        assert [text for text, _ in got] == [text for text, _ in alone]
        for (_, sage_got), (_, sage_alone) in zip(got, alone):
            if sage_alone is not None:
                assert sage_got["p_yes"] == pytest.approx(sage_alone["p_yes"], abs=1e-4)
                assert sage_got["anomaly"] == sage_alone["anomaly"]  # None zero-shot
        status, text = _metrics(s)
        batches = dict(line.split(" ") for line in text.splitlines() if line.startswith("sage_batch_size_"))
        assert status == 200 and int(batches["sage_batch_size_sum"]) > int(batches["sage_batch_size_count"])
    finally:
        s.close()


def _metrics(s) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", s.server.port, timeout=30)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text


def test_max_batch_one_serves_one_at_a_time(engine):
    from sage_cli.errors import SageError

    with pytest.raises(SageError, match="--max-batch"):
        Running(engine, max_batch=0)
    s = Running(engine, max_batch=1)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            s.client().chat.completions.create(model="tiny", messages=_ask("Hi"), max_tokens=3))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 3
        _, text = _metrics(s)
        assert "sage_batch_size_sum 3" in text and "sage_batch_size_count 3" in text
    finally:
        s.close()


def test_a_calibrated_checkpoint_adds_its_verdict_to_image_answers(engine):
    s = Running(engine)
    try:
        # a calibration on the map alone: P(defect) = sigmoid(-2 + 0 * log peak) = 0.12 whatever the pair
        s.server.state.runner.calibration = {"features": ["log_map_max"], "weights": [0.0], "bias": -2.0,
                                             "threshold": 0.5, "question": "Is there any defect on the test object?"}
        r = s.client().chat.completions.create(model="tiny", messages=_ask("Is it broken?", _img(71), _img(72)),
                                               max_tokens=3)
        sage = r.model_extra["sage"]
        assert sage["p_defect"] == pytest.approx(0.1192, abs=1e-3) and sage["verdict"] == "normal"
        assert sage["threshold"] == 0.5 and 0 <= sage["p_yes"] <= 1
        zero_shot = s.client().chat.completions.create(model="tiny", messages=_ask("Is it broken?", _img(73)),
                                                       max_tokens=3)
        assert "p_defect" not in zero_shot.model_extra["sage"]  # no map, no verdict
    finally:
        s.close()
