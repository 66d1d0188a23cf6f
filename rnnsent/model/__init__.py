"""The model: SentimentRNN (sentiment.py), its recurrent layer (recurrent.py: PyTorch's or the fused CPU kernel of
fused.py and csrc/) and what its logits mean (objective.py: loss, predicted class, probabilities)."""
