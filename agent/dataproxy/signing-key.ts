/**
 * The dataproxy's HMAC keys live in a data-plane file (never sent anywhere): one base64 key per
 * line, `#` comments allowed; the first line signs, the others still verify (rotation: prepend a
 * new key, remove the old one after the longest URL lifetime). Created with one random 32-byte
 * key and mode 0600 when missing (if asked); refused when readable by group or others.
 */
import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { getErrorCode } from '../../common/errors.js';
import { DataproxyErrorCode, dataproxyError } from './errors.js';

export async function loadSigningKeys(file: string, options: { create?: boolean } = {}): Promise<Buffer[]> {
  let text: string;
  try {
    const info = await stat(file);
    if ((info.mode & 0o077) !== 0) throw dataproxyError(DataproxyErrorCode.KEY_FILE, `${file} is readable by group or others (chmod 600)`);
    text = await readFile(file, 'utf8');
  } catch (reason) {
    if (getErrorCode(reason) !== 'ENOENT' || options.create !== true) {
      if (getErrorCode(reason) === DataproxyErrorCode.KEY_FILE) throw reason;
      throw dataproxyError(DataproxyErrorCode.KEY_FILE, `cannot read the signing-key file ${file} (${getErrorCode(reason) ?? 'error'})`);
    }
    text = `# tether dataproxy signing keys: first signs, all verify\n${randomBytes(32).toString('base64')}\n`;
    await writeFile(file, text, { mode: 0o600, flag: 'wx' });
  }
  const keys = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => Buffer.from(line, 'base64'));
  if (keys.length === 0 || keys.some((key) => key.length < 32)) throw dataproxyError(DataproxyErrorCode.KEY_FILE, `${file} must hold base64 keys of at least 32 bytes`);
  return keys;
}
