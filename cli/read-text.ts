/** Reading a file named on the command line, with the documented codes for what goes wrong. */
import { readFile } from 'node:fs/promises';
import { TetherError, getErrorCode } from '../common/errors.js';

/** The file's text; `FILE_NOT_FOUND` or `FILE_UNREADABLE` naming `what` and the path otherwise. */
export async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (reason) {
    const code = getErrorCode(reason) === 'ENOENT' ? 'FILE_NOT_FOUND' : 'FILE_UNREADABLE';
    throw new TetherError(code, `cannot read ${what} ${path}`, { cause: reason });
  }
}
