"""Stream day archives of broadcast audio into 16 kHz FLAC plus Whisper transcripts."""

__version__ = "0.1.0"
