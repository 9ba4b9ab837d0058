"""Peer for `fisherkit bench t5`: Hugging Face transformers T5 on PyTorch CPU, the same
workload (t5-small shape, random weights, batch 8, inputs 128, 32 targets / new tokens).

python3 crates/t5/bench/hf_forward_peer.py  -> JSON: teacher-forced forward tokens/s and
greedy-generation tokens/s (exactly 32 new tokens), best of 3 after one warm-up.
"""
import json, time
import torch
from transformers import T5Config, T5ForConditionalGeneration

torch.manual_seed(0)
cfg = T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               dropout_rate=0.0, feed_forward_proj="relu", tie_word_embeddings=True,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
m = T5ForConditionalGeneration(cfg).eval()
B, Li, Lt = 8, 128, 32
x = torch.randint(3, cfg.vocab_size, (B, Li))
y = torch.randint(3, cfg.vocab_size, (B, Lt))


def best(f, repeats=3):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


with torch.no_grad():
    forward_s = best(lambda: m(input_ids=x, labels=y).logits.log_softmax(-1))
    generate_s = best(lambda: m.generate(input_ids=x, max_new_tokens=Lt, min_new_tokens=Lt, do_sample=False))
print(json.dumps({
    "peer": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
    "threads": torch.get_num_threads(),
    "forward_s": round(forward_s, 3),
    "forward_tokens_per_s": round(B * (Li + Lt) / forward_s, 1),
    "generate_s": round(generate_s, 3),
    "generate_tokens_per_s": round(B * Lt / generate_s, 1),
}))
