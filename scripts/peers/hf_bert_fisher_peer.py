"""Peer timing: the exact label Fisher of a BERT sequence classifier in Hugging Face
transformers (PyTorch CPU), example by example as the reference code computes it — one
forward pass per example, one backward pass per class (retain_graph), squared gradients
weighted by the class probability — the side-by-side of
`fisherkit fisher --model DIR --data F.jsonl --outputs labels`.

python hf_bert_fisher_peer.py MODEL_DIR DATA.jsonl   (lines {"text": ...})
  -> JSON: examples/s
"""
import json, sys, time
import torch
import transformers
from transformers import AutoTokenizer, BertForSequenceClassification

model_dir, data = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
m = BertForSequenceClassification.from_pretrained(model_dir)
m.eval()
texts = [json.loads(l)["text"] for l in open(data)]
params = [p for p in m.parameters()]
fisher = [torch.zeros_like(p) for p in params]
t = time.perf_counter()
for text in texts:
    enc = tok(text, truncation=True, max_length=m.config.max_position_embeddings, return_tensors="pt")
    log_probs = torch.log_softmax(m(**enc).logits[0], -1)
    probs = log_probs.exp().detach()
    for c in range(log_probs.shape[0]):
        grads = torch.autograd.grad(log_probs[c], params, retain_graph=True)
        for f, g in zip(fisher, grads):
            f.add_(probs[c] * g * g)
dt = time.perf_counter() - t
print(json.dumps({"peer": "transformers " + transformers.__version__ + " / torch " + torch.__version__,
                  "threads": torch.get_num_threads(), "examples": len(texts),
                  "seconds": round(dt, 2), "examples_per_s": round(len(texts) / dt, 3)}))
