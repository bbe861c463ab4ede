"""What happens to one member: archive reading, decoding and conversion, transcription (the
model and both decoders), upload."""
