"""Stems each line of stdin with NLTK's PorterStemmer in its default mode (what rouge_score's
use_stemmer=True uses) and prints one stem per line: the reference for the C# stemmer's test."""
import sys

from nltk.stem import porter

stemmer = porter.PorterStemmer()
for line in sys.stdin.read().split("\n"):
    if line:
        print(stemmer.stem(line))
