"""Peer timing: one AdamW training step of a BERT sequence classifier in Hugging Face
transformers (PyTorch CPU), the side-by-side of `fisherkit bench train --preset minilm-l6
--num-labels 5`.

python hf_bert_train_peer.py [BATCH] [LEN] [MODEL_DIR]
  -> JSON: step seconds and tokens/s (BATCH x LEN input tokens per step)

With MODEL_DIR (e.g. the real all-MiniLM-L6-v2 from scripts/fetch-real.sh) the encoder's
weights are loaded and a 5-class head added; without, the same shape is randomly
initialised (the time does not depend on the values). Dropout is off on both sides.
"""
import json, sys, time
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

torch.manual_seed(0)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
L = int(sys.argv[2]) if len(sys.argv) > 2 else 128
if len(sys.argv) > 3:
    m = BertForSequenceClassification.from_pretrained(sys.argv[3], num_labels=5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
else:
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512, num_labels=5,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = BertForSequenceClassification(cfg)
x = torch.randint(1000, m.config.vocab_size, (B, L))
y = torch.randint(0, 5, (B,))
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
m.train()
def step():
    loss = m(input_ids=x, labels=y).loss
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(2): step()
n = 5; t = time.perf_counter()
for _ in range(n): step()
dt = (time.perf_counter() - t) / n
print(json.dumps({"peer": "transformers " + transformers.__version__ + " / torch " + torch.__version__,
                  "threads": torch.get_num_threads(), "batch": B, "input_len": L,
                  "params": sum(p.numel() for p in m.parameters()),
                  "train_step_s": round(dt, 3), "train_tokens_per_s": round(B * L / dt, 1)}))
