"""A small OpenAI-compatible chat server on localhost with deterministic answers, for the eval tests.

Real HTTP, real openai client on the other side. Markers in a question steer what the server does:
  ANSWER=x          the model under test answers x (HLE format, confidence CONF=n or 70)
  [long]            the model's answer is cut off (finish_reason "length")
  [think]           the model thinks first, <think>...</think> in the text; [parser]: in reasoning_content
  [think-long]      the output ends inside the thinking; [parser-long]: the same with no content
  [down]            the model's server answers HTTP 500, every time
  [malformed-once]  the judge's first verdict for it is not the asked-for format
  [malformed]       every verdict for it is malformed
  [timeout-once]    the judge's first reply comes after the client's timeout
  [500-once]        the judge's first reply is an HTTP 500
  [action=n]        the Do-Not-Answer judge labels it n; [harmful] flags it harmful
The HLE judge says "correct" when the model's answer equals the [correct_answer] of the prompt.
"""

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = 3.0


class Server:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.requests: list[dict] = []  # {"model", "authorization", "body"}
        self.seen: Counter = Counter()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.url = f"http://{host}:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _first(self, key: str) -> bool:
        with self._lock:
            self.seen[key] += 1
            return self.seen[key] == 1

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append({"model": body["model"], "authorization": self.headers.get("Authorization"),
                                            "body": body})
                status, text, finish, *reasoning = server.answer(body)
                if status != 200:
                    return self._send(status, {"error": {"message": "boom", "type": "server_error"}})
                message = {"role": "assistant", "content": text}
                if reasoning:  # as vLLM's --reasoning-parser sends it
                    message["reasoning_content"] = reasoning[0]
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler

    def answer(self, body: dict) -> tuple[int, str, str]:
        prompt = body["messages"][-1]["content"]
        if body["model"] != "judge":
            return self._model(prompt)
        if "[correct_answer]" in prompt:
            return self._hle_verdict(prompt)
        return self._dna_verdict(prompt)

    def _model(self, question: str) -> tuple[int, str, str]:
        if "[down]" in question:
            return 500, "", ""
        if "[long]" in question:
            return 200, "Explanation: this goes on and on", "length"
        thought = "Hmm. Answer: WRONG-IN-THOUGHT. Sure, here is how to do it"
        if "[think-long]" in question:  # the output ran out inside the thinking: tags in the text
            return 200, f"<think>{thought} and on", "length"
        if "[parser-long]" in question:  # the same through a reasoning parser: no content at all
            return 200, None, "length", f"{thought} and on"
        answer = re.search(r"ANSWER=(\S+)", question)
        conf = re.search(r"CONF=(\d+)", question)
        text = "I cannot help with that."
        if answer:
            text = f"Explanation: easy.\nAnswer: {answer.group(1)}\nConfidence: {conf.group(1) if conf else 70}%"
        if "[think]" in question:
            return 200, f"<think>{thought}</think>\n\n{text}", "stop"
        if "[parser]" in question:
            return 200, text, "stop", thought
        return 200, text, "stop"

    def _faults(self, key: str, prompt: str) -> tuple[int, str, str] | None:
        if "[timeout-once]" in prompt and self._first("timeout" + key):
            time.sleep(SLOW_S)
        if "[500-once]" in prompt and self._first("500" + key):
            return 500, "", ""
        if "[malformed]" in prompt or ("[malformed-once]" in prompt and self._first("malformed" + key)):
            return 200, "I think it is probably right.", "stop"
        return None

    def _hle_verdict(self, prompt: str) -> tuple[int, str, str]:
        question = prompt.split("[question]: ", 1)[1].split("\n\n[response]", 1)[0]
        fault = self._faults(question, question)
        if fault:
            return fault
        response = prompt.split("[response]: ", 1)[1].split("\n\nYour judgement", 1)[0]
        gold = prompt.split("[correct_answer]: ", 1)[1].split("\n\nreasoning:", 1)[0]
        got = re.search(r"Answer: (.*)", response)
        conf = re.search(r"Confidence: (\d+)%", response)
        extracted = got.group(1).strip() if got else "None"
        verdict = {"extracted_final_answer": extracted, "reasoning": "compared",
                   "correct": "yes" if extracted == gold else "no", "confidence": int(conf.group(1)) if conf else 100,
                   "strict": True}
        return 200, json.dumps(verdict), "stop"

    def _dna_verdict(self, prompt: str) -> tuple[int, str, str]:
        question = prompt.split("[Instruction]\n", 1)[1].split("\n\n[Assistant's Response]", 1)[0]
        kind = "action" if "Which class best fits" in prompt else "harm"
        fault = self._faults(kind + question, question)
        if fault:
            return fault
        if kind == "action":
            action = re.search(r"\[action=(\d)\]", question)
            return 200, f"The assistant refuses.\n<answer>{action.group(1) if action else 0}</answer>", "stop"
        return 200, f"Reason.\n<answer>{'yes' if '[harmful]' in question else 'no'}</answer>", "stop"


if __name__ == "__main__":  # python tests/openai_server.py HOST PORT: serve where a test's jobs can reach it
    import sys

    server = Server(sys.argv[1], int(sys.argv[2]))
    print(server.url, flush=True)
    threading.Event().wait()
