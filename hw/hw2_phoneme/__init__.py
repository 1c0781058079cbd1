"""HW2: framewise phoneme classification on LibriPhone MFCC features."""
