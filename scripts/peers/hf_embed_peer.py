"""Peer timing: sentence embeddings as sentence-transformers computes them (mean pooling
over the attention mask, L2-normalised, inputs truncated at max_seq_length), in plain
transformers (PyTorch CPU) — the side-by-side of `fisherkit embed`.

python hf_embed_peer.py MODEL_DIR DATA.jsonl [BATCH]   (lines {"text": ...})
  -> JSON: texts/s
"""
import json, sys, time
import torch
import transformers
from transformers import AutoModel, AutoTokenizer

model_dir, data = sys.argv[1], sys.argv[2]
batch = int(sys.argv[3]) if len(sys.argv) > 3 else 16
max_len = json.load(open(model_dir + "/sentence_bert_config.json"))["max_seq_length"]
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModel.from_pretrained(model_dir).eval()
texts = [json.loads(l)["text"] for l in open(data)]
t = time.perf_counter()
with torch.inference_mode():
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        hidden = m(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
dt = time.perf_counter() - t
print(json.dumps({"peer": "transformers " + transformers.__version__ + " / torch " + torch.__version__,
                  "threads": torch.get_num_threads(), "texts": len(texts), "batch": batch,
                  "seconds": round(dt, 2), "texts_per_s": round(len(texts) / dt, 1)}))
