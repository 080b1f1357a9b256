"""maiac: a compiler for transformer inference on Microsoft Maia 200."""
