"""The model: SentimentRNN (sentiment.py), its side of its recurrent layer (recurrent.py: Keras' biases, lengths, the
vocabulary-table shortcut; the layer is rnnsent.nn's, on the fused CPU kernel of fused.py and csrc/) and what its
logits mean (objective.py: loss, predicted class, probabilities)."""
