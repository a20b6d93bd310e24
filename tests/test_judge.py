"""The judge's endpoint path against a real chat-completions HTTP server on 127.0.0.1.

The server answers scripted replies for known prompts (so Yes / No / malformed counts are
exact), fails the first requests with 500 and 429 (retries), and answers anything else through
a tiny real Llama (its babble is what a malformed answer looks like).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from hsae.interop.judge import parse_explanation, parse_judgement, summarise
from hsae.interop.llm import OpenAIChat, ResponseCache
from tiny import build_tiny, collect_tiny, train_tiny


class ChatServer:
    """POST /v1/chat/completions in the OpenAI wire format; records every request."""

    def __init__(self, lm=None, tok=None):
        self.script: dict[str, str] = {}  # last user message -> reply
        self.fail: list[int] = []  # statuses returned by the next requests, in order
        self.requests: list[dict] = []
        self.lm, self.tok = lm, tok
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with srv.lock:
                    srv.requests.append(body)
                    status = srv.fail.pop(0) if srv.fail else 200
                if self.path != "/v1/chat/completions":
                    status = 404
                if status != 200:
                    return self._send(status, {"error": {"message": "scripted failure", "type": "server_error"}})
                prompt = body["messages"][-1]["content"]
                text = srv.script.get(prompt)
                if text is None:
                    text = srv.babble(prompt, body.get("max_tokens") or 8)
                self._send(200, {"id": "x", "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def babble(self, prompt: str, n: int) -> str:
        """A real model's continuation of the prompt's last words (greedy)."""
        with self.lock, torch.no_grad():
            ids = self.tok(" ".join(prompt.split()[-12:]), return_tensors="pt")["input_ids"]
            out = self.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=min(n, 8),
                                   do_sample=False, pad_token_id=self.tok.eos_token_id)
        return self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = build_tiny(tmp_path_factory.mktemp("judge"))
    return AutoModelForCausalLM.from_pretrained(root / "model").eval(), AutoTokenizer.from_pretrained(root / "model")


@pytest.fixture
def server(tiny_lm):
    s = ChatServer(*tiny_lm)
    yield s
    s.close()


def _msgs(text):
    return [{"role": "system", "content": "judge"}, {"role": "user", "content": text}]


def test_answers_retries_cache_and_malformed_counts(server, tmp_path):
    replies = ["HaveRelationship: Yes\nConfidence: High", "HaveRelationship: No\nConfidence: Low",
               "**HaveRelationship:** yes\n**Confidence:** medium", "I am not sure what you mean."]
    prompts = [f"pair {i}" for i in range(8)]
    for p, r in zip(prompts, replies * 2):
        server.script[p] = r
    prompts.append("the cat sat on the mat")  # unscripted: the tiny model answers
    server.fail = [500, 429]
    b = OpenAIChat(server.url, "test-model", api_key="k", cache=ResponseCache(tmp_path / "cache"),
                   concurrency=4, retries=3, backoff=0.01)
    answers = b.answer_all([_msgs(p) for p in prompts])
    assert answers[:8] == replies * 2
    assert b.stats == {"requests": 11, "cached": 0, "retries": 2, "failed": 0}
    s = summarise(answers)
    assert (s["pairs"], s["answered"], s["malformed"], s["failed"], s["yes"]) == (9, 6, 3, 0, 4)
    assert s["yes_rate"] == pytest.approx(4 / 6)
    assert s["by_confidence"]["High"] == {"n": 2, "yes_rate": 1.0}
    assert s["by_confidence"]["Low"] == {"n": 2, "yes_rate": 0.0}
    assert s["by_confidence"]["Medium"] == {"n": 2, "yes_rate": 1.0}
    # a second run over the same requests is served from the disk cache: zero new HTTP requests
    n = len(server.requests)
    b2 = OpenAIChat(server.url, "test-model", api_key="k", cache=ResponseCache(tmp_path / "cache"))
    assert b2.answer_all([_msgs(p) for p in prompts]) == answers
    assert len(server.requests) == n and b2.stats["cached"] == 9 and b2.stats["requests"] == 0


def test_persistent_failures_are_counted_not_raised(server, tmp_path):
    server.fail = [503] * 10
    b = OpenAIChat(server.url, "m", api_key="k", cache=ResponseCache(tmp_path / "c"), retries=2, backoff=0.01)
    assert b.answer_all([_msgs("a"), _msgs("b")]) == [None, None]
    assert b.stats["failed"] == 2 and b.stats["requests"] == 6
    assert summarise([None, None])["failed"] == 2
    # failures are not cached: once the server recovers, the same requests are answered
    server.fail = []
    server.script["a"] = "HaveRelationship: No\nConfidence: High"
    assert b.answer_all([_msgs("a")]) == ["HaveRelationship: No\nConfidence: High"]


def test_client_errors_are_not_retried(server, tmp_path):
    server.fail = [400]
    b = OpenAIChat(server.url, "m", api_key="k", cache=ResponseCache(None), retries=3, backoff=0.01)
    assert b.answer(_msgs("x")) is None and b.stats["requests"] == 1
    assert "scripted failure" in b.last_error


@pytest.mark.parametrize("text,want", [
    ("HaveRelationship: Yes\nConfidence: High", ("Yes", "High")),
    ("have_relationship - NO. confidence = low", ("No", "Low")),
    ("HaveRelationship: Yes", ("Yes", None)),
    ("Yes, they are related.", (None, None)),
    ("", (None, None)),
    (None, (None, None)),
])
def test_parse_judgement(text, want):
    assert parse_judgement(text) == want


def test_parse_explanation():
    assert parse_explanation("Explanation: closing brackets in Python code\nmore") == "closing brackets in Python code"
    assert parse_explanation('  "the word dog"  ') == "the word dog"
    assert parse_explanation("   ") is None and parse_explanation(None) is None


def test_no_endpoint_is_a_user_error(monkeypatch):
    from hsae.config import UserError

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="--base-url"):
        OpenAIChat(None, "m")
    with pytest.raises(UserError, match="--api-model"):
        OpenAIChat("http://127.0.0.1:9/v1", "")


# ---- end to end: a tiny run with real contexts, the CLI against the server --------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny Llama store, an HSAE and a post-hoc run on it, both with `hsae contexts`."""
    from hsae.cli import main

    root = build_tiny(tmp_path_factory.mktemp("judge_runs"))
    store = collect_tiny(root, 0, 4000)
    for name, extra in (("hsae", []), ("posthoc", ["--baseline"])):
        train_tiny(store, root / name, "4,8,16", "2", 128, "--holdout", "0.3", *extra)
        assert main(["contexts", str(root / name), "--quiet"]) == 0
    return root


def test_judge_cli_two_runs_counts_and_cache(runs, server, tmp_path, capsys):
    from hsae.cli import main
    from hsae.explore.contexts import load_contexts
    from hsae.interop.judge import judge_requests, sample_pairs
    from hsae.rundir import load_run

    replies = ["HaveRelationship: Yes\nConfidence: High", "HaveRelationship: No\nConfidence: Medium",
               "Sure! Both are about cats."]
    want = {}
    for name in ("hsae", "posthoc"):
        _, model, _ = load_run(runs / name)
        ctx = load_contexts(runs / name)
        reqs = judge_requests(ctx, sample_pairs(model, ctx, 6, 0), 0)
        assert reqs and "<<" in reqs[0][1]["content"]
        for k, r in enumerate(reqs):
            server.script[r[1]["content"]] = replies[k % 3]
        n = len(reqs)
        want[name] = (n, sum(k % 3 == 0 for k in range(n)), sum(k % 3 == 2 for k in range(n)))
    server.fail = [500, 429]
    args = ["judge", str(runs / "hsae"), str(runs / "posthoc"), "--pairs", "6", "--base-url", server.url,
            "--api-model", "m", "--cache", str(tmp_path / "cache"), "--retries", "2", "--quiet"]
    assert main([*args, "--json", str(tmp_path / "j.json")]) == 0
    out = capsys.readouterr().out
    assert "hsae" in out and "posthoc" in out and "yes rate" in out
    j = json.loads((tmp_path / "j.json").read_text())
    for name, (n, yes, malformed) in want.items():
        r = j["runs"][str(runs / name)]
        assert (r["pairs"], r["yes"], r["malformed"], r["failed"]) == (n, yes, malformed, 0)
        assert len(r["items"]) == n
    assert j["stats"]["retries"] == 2
    sent = len(server.requests)
    assert main(args) == 0  # rerun: everything from the cache
    assert len(server.requests) == sent
    assert "0 requests" in capsys.readouterr().out


def test_explain_cli_writes_and_merges_explanations(runs, server, tmp_path, capsys):
    import shutil

    from hsae.cli import main
    from hsae.explore.contexts import load_contexts
    from hsae.interop.judge import examples_of, explain_requests

    run = tmp_path / "run"
    shutil.copytree(runs / "hsae", run)
    ctx = load_contexts(run)
    feats = [(0, i) for i in range(4) if examples_of(ctx, 0, i)]
    for k, r in enumerate(explain_requests(ctx, feats)):
        server.script[r[1]["content"]] = f"Explanation: feature number {k}" if k else "   "
    assert main(["explain", str(run), "--levels", "0", "--base-url", server.url, "--api-model", "m",
                 "--no-cache", "--quiet"]) == 0
    got = json.loads((run / "explanations.json").read_text())
    assert got == {f"{l}:{i}": f"feature number {k}" for k, (l, i) in enumerate(feats) if k}
    assert "1 malformed" in capsys.readouterr().out
    (run / "explanations.json").write_text(json.dumps({"2:0": "kept"}))
    assert main(["explain", str(run), "--levels", "0", "--max-per-level", "2", "--base-url", server.url,
                 "--api-model", "m", "--no-cache", "--quiet"]) == 0
    got = json.loads((run / "explanations.json").read_text())
    assert got["2:0"] == "kept" and len(got) == 1 + sum(1 for k in range(min(2, len(feats))) if k)


def test_local_judge_runs_offline_on_a_local_model(runs, tmp_path, capsys):
    """--local with a local HF model dir (the tiny Llama: no chat template, so its answers are malformed)."""
    from hsae.cli import main

    assert main(["judge", str(runs / "hsae"), "--pairs", "3", "--local", "--local-model", str(runs / "model"),
                 "--cache", str(tmp_path / "c"), "--json", str(tmp_path / "j.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "j.json").read_text())["runs"][str(runs / "hsae")]
    assert r["pairs"] == 3 and r["answered"] + r["malformed"] == 3 and r["failed"] == 0


def test_judge_without_contexts_is_a_user_error(runs, tmp_path, capsys):
    import shutil

    from hsae.cli import main

    shutil.copytree(runs / "hsae", tmp_path / "r")
    (tmp_path / "r" / "contexts.safetensors").unlink()
    assert main(["judge", str(tmp_path / "r"), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hsae contexts" in err


@pytest.mark.slow
def test_local_judge_with_the_embedded_smollm2(runs, tmp_path):
    """The real embedded SmolLM2-135M-Instruct answers two pairs through its chat template."""
    from hsae.cli import main

    assert main(["judge", str(runs / "hsae"), "--pairs", "2", "--local", "--cache", str(tmp_path / "c"),
                 "--json", str(tmp_path / "j.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "j.json").read_text())["runs"][str(runs / "hsae")]
    assert r["pairs"] == 2 and r["answered"] + r["malformed"] == 2
    assert all(it["answer"] for it in r["items"])


def test_auc_of_planted_scores():
    from hsae.interop.judge import auc

    assert auc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.7, 0.7], [0.7]) == 0.5  # a judge that scores everything alike: 0.5
    assert auc([], [0.2]) is None


def test_controls_are_non_child_pairs_from_the_edges_levels(runs):
    from hsae.explore.contexts import load_contexts
    from hsae.interop.judge import examples_of, sample_controls, sample_pairs
    from hsae.rundir import load_run

    _, model, _ = load_run(runs / "hsae")
    ctx = load_contexts(runs / "hsae")
    pairs = sample_pairs(model, ctx, 10, 0)
    ctl = sample_controls(model, ctx, pairs, 0)
    assert [l for l, _, _ in ctl] == [l for l, _, _ in pairs]
    assert all(int(model.parent(l)[c]) != p and examples_of(ctx, l, c) and examples_of(ctx, l - 1, p) for l, c, p in ctl)
    assert ctl == sample_controls(model, ctx, pairs, 0) and ctl != sample_controls(model, ctx, pairs, 1)


@pytest.mark.parametrize("control_reply,diff", [("HaveRelationship: No\nConfidence: High", 1.0),
                                                ("HaveRelationship: Yes\nConfidence: High", 0.0)])
def test_judge_yes_rate_is_measured_against_random_pairs(runs, server, tmp_path, control_reply, diff):
    """A judge that tells edges from random pairs scores a difference of 1; one that says Yes to all, 0."""
    from hsae.cli import main
    from hsae.explore.contexts import load_contexts
    from hsae.interop.judge import judge_requests, sample_controls, sample_pairs
    from hsae.rundir import load_run

    _, model, _ = load_run(runs / "hsae")
    ctx = load_contexts(runs / "hsae")
    pairs = sample_pairs(model, ctx, 5, 0)
    reqs = judge_requests(ctx, pairs + sample_controls(model, ctx, pairs, 0), 0)
    for k, r in enumerate(reqs):
        server.script[r[1]["content"]] = "HaveRelationship: Yes\nConfidence: High" if k < len(pairs) else control_reply
    assert main(["judge", str(runs / "hsae"), "--pairs", "5", "--base-url", server.url, "--api-model", "m",
                 "--no-cache", "--json", str(tmp_path / "j.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "j.json").read_text())["runs"][str(runs / "hsae")]
    assert r["yes_rate"] == 1.0 and r["control"]["pairs"] == len(pairs)
    assert r["yes_rate_difference"] == pytest.approx(diff) and r["auc"] is None


def test_local_judge_scores_by_the_probability_of_yes(runs, tmp_path):
    from hsae.cli import main

    assert main(["judge", str(runs / "hsae"), "--pairs", "4", "--local", "--local-model", str(runs / "model"),
                 "--no-cache", "--json", str(tmp_path / "j.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "j.json").read_text())["runs"][str(runs / "hsae")]
    ps = [it["p_yes"] for it in r["items"] + r["control_items"]]
    assert len(ps) == 8 and all(0 < p < 1 for p in ps)
    assert all(it["parsed"][0] == ("Yes" if it["p_yes"] > 0.5 else "No") for it in r["items"])
    assert 0 <= r["auc"] <= 1 and r["answered"] == 4
