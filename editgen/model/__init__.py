"""MusicGen in torch: loading (checkpoint dir, hub id, random presets), the decoder step
and cross K/V modules that the export traces and the torch backend runs."""
