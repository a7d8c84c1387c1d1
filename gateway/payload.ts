/**
 * Turns an offload's payload into pixels the gateway model takes (HWC uint8 at its card's size
 * and colour): a quantized tensor is dequantized back to pixels with the envelope's own scale,
 * zero point, mean and std (the device model's, not ours); a JPEG is decoded; either is resized
 * when its size differs from the card's. Feature vectors (privacy mode) need a head trained on
 * the device model's features, which this gateway does not have: they are refused.
 */
import sharp from 'sharp';
import { type OffloadMessage, tensorToPixels } from '../cascade/protocol.ts';
import type { ModelCard } from '../models/card.ts';

/** Why a payload could not be used; the `reason` goes into the answer and the rejects metric. */
export class PayloadError extends Error {
  readonly reason: 'unsupported-payload' | 'bad-payload';
  constructor(reason: 'unsupported-payload' | 'bad-payload', message: string) {
    super(message);
    this.name = 'PayloadError';
    this.reason = reason;
  }
}

/** Largest decoded JPEG the gateway accepts (pixels), against decompression bombs. */
const MAX_JPEG_PIXELS = 4096 * 4096;

function channelsOf(card: ModelCard): number {
  return card.input.colour === 'gray' ? 1 : 3;
}

async function fit(
  raw: Uint8Array,
  w: number,
  h: number,
  channels: number,
  card: ModelCard,
): Promise<Uint8Array> {
  const c = channelsOf(card);
  const { width, height } = card.input;
  if (w === width && h === height && channels === c) return raw;
  let img = sharp(raw, { raw: { width: w, height: h, channels: channels as 1 | 3 | 4 } });
  img = c === 1 ? img.greyscale() : img.removeAlpha().toColourspace('srgb');
  const out = await img.resize(width, height, { fit: 'fill' }).raw().toBuffer({ resolveWithObject: true });
  return checkChannels(out.data, out.info.channels, card);
}

function checkChannels(data: Buffer, channels: number, card: ModelCard): Uint8Array {
  const c = channelsOf(card);
  if (channels === c) return new Uint8Array(data.buffer, data.byteOffset, data.length);
  // sharp keeps a grey image 1-channel after toColourspace('srgb') on some inputs: expand it.
  if (channels === 1 && c === 3) {
    const out = new Uint8Array(data.length * 3);
    for (let i = 0; i < data.length; i++) out.fill(data[i], i * 3, i * 3 + 3);
    return out;
  }
  throw new PayloadError('bad-payload', `decoded ${channels} channels, the model takes ${c}`);
}

/**
 * Pixels of an offload for the model of `card`.
 * @throws {PayloadError} `unsupported-payload` for features, `bad-payload` for an undecodable JPEG
 *   or a tensor with 2 or 4 channels.
 */
export async function offloadPixels(m: OffloadMessage, card: ModelCard): Promise<Uint8Array> {
  switch (m.contentType) {
    case 'tensorU8': {
      const t = m.tensor;
      if (t === undefined) throw new PayloadError('bad-payload', 'tensor payload without tensor info');
      if (t.channels !== 1 && t.channels !== 3)
        throw new PayloadError('bad-payload', `tensor with ${t.channels} channels`);
      // From Buffer's shared pool (no allocation of its own below 4 KiB): one per frame.
      const pixels = tensorToPixels(t, m.payload, Buffer.allocUnsafe(t.channels * t.height * t.width));
      return fit(pixels, t.width, t.height, t.channels, card);
    }
    case 'jpeg': {
      try {
        const c = channelsOf(card);
        let img = sharp(m.payload, { failOn: 'error', limitInputPixels: MAX_JPEG_PIXELS });
        img = c === 1 ? img.greyscale() : img.removeAlpha().toColourspace('srgb');
        const { width, height } = card.input;
        const out = await img
          .resize(width, height, { fit: 'fill' })
          .raw()
          .toBuffer({ resolveWithObject: true });
        return checkChannels(out.data, out.info.channels, card);
      } catch (err) {
        if (err instanceof PayloadError) throw err;
        throw new PayloadError('bad-payload', `JPEG cannot be decoded: ${(err as Error).message}`);
      }
    }
    case 'featuresF32':
      throw new PayloadError(
        'unsupported-payload',
        'feature payloads (privacy mode) need a feature head; this gateway serves tensors and JPEGs',
      );
  }
}
