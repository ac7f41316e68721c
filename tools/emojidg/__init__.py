"""EmojiDG raw-data builder: npm emoji sets -> DomainBed-style PNG tree + metadata.

Modules, one job each:
  sources  -- pinned npm tarballs: fetch with `npm pack`, verify sha256, licence check, extract.
  assets   -- per style/domain loaders: codepoint sequence -> image asset (SVG text or raster file).
  catalog  -- codepoint normalisation, emoji catalogue, class filtering rules, base/new split.
  render   -- rasterise + composite onto deterministic random backgrounds.
  build    -- the CLI that ties them together.
"""
