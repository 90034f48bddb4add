"""The real `openai` client against `emo serve` (run by tests/serve.rs): plain, streamed, steered and
modulated completions, the emotion trace and a guard, and the errors the client raises. Prints one JSON object with what it got."""
import json
import sys

import openai

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
out = {}
msgs = [{"role": "user", "content": "Tell me about your weekend."}]

r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0)
out["plain"] = {"text": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "usage": [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]}

parts = []
usage = None
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
out["stream"] = {"text": "".join(parts), "usage": usage}

r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                   extra_body={"steering": {"emotion": "anger", "alpha": 8.0}})
out["steered"] = r.choices[0].message.content
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                   extra_body={"circuit": {"emotion": "fear", "scale": 1.0}})
out["modulated"] = r.choices[0].message.content

# The emotion readout and a guard through extra_body; the extension fields come back as extra attributes.
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                   extra_body={"emotion_trace": {}})
trace = r.choices[0].emotion_trace
out["trace"] = {"text": r.choices[0].message.content, "tokens": trace["tokens"], "top": trace["top"],
                "rows": len(trace["scores"]), "width": len(trace["scores"][0])}
streamed = []
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0, stream=True,
                                            extra_body={"emotion_trace": {}}):
    for c in chunk.choices:
        t = getattr(c, "emotion_trace", None)
        if t and t.get("tokens"):
            streamed.extend(t["tokens"])
out["trace_stream_tokens"] = streamed
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                   extra_body={"guard": {"emotion": "anger", "threshold": -1e6,
                                                         "action": {"steer": {"emotion": "away", "alpha": 8}}}})
out["guard"] = {"text": r.choices[0].message.content, "switches": r.choices[0].guard}

try:
    client.chat.completions.create(model=model, messages=msgs, max_tokens=4,
                                   extra_body={"steering": {"emotion": "boredom"}})
    out["bad_emotion"] = None
except openai.BadRequestError as e:
    out["bad_emotion"] = {"status": e.status_code, "param": e.body.get("param") if isinstance(e.body, dict) else None}

try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).chat.completions.create(model=model, messages=msgs)
    out["bad_key"] = None
except openai.AuthenticationError as e:
    out["bad_key"] = e.status_code

out["models"] = [m.id for m in client.models.list().data]
print(json.dumps(out))
