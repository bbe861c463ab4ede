"""Speech recognition, layered so that imports only go down:

factory      open_decoder: the decoder the options ask for
batched      the batched decoder's threads and queue (the default)
per_member   faster-whisper's own transcribe, a member a thread
calls        the model's calls over a batch of rows: encode, detect, generate, align
provenance   what made a transcript, from the options
loader       the model, loaded once per job
timing       tokens to timed segments and words; the member's timeline
policy       quality guards, rows, languages, packing
protocol     the decoder's and the loaded model's surface, the decoder's figures
options      the frozen decode options, built once from the settings
"""
