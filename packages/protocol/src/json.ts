/**
 * JSON from an untrusted party, parsed only once its nesting is known to be within
 * Limits.maxJsonDepth: a message of nothing but brackets parses fifty times slower than one of the
 * same size that nests little, and what parses must then be walked by the schemas.
 */
import { Limits } from './limits.js';

/** Whether arrays and objects in `text` nest at most `max` deep (brackets inside JSON strings do not count). */
export function jsonDepthWithin(text: string, max: number): boolean {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // A string is skipped natively (it is most of a message: the bearer): to the next quote not
      // escaped, i.e. preceded by an even number of backslashes.
      for (;;) {
        const end = text.indexOf('"', i + 1);
        if (end < 0) return true; // not JSON: JSON.parse says so
        let slashes = 0;
        while (text.charCodeAt(end - 1 - slashes) === 0x5c) slashes++;
        i = end;
        if (slashes % 2 === 0) break;
      }
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return false;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return true;
}

/**
 * JSON.parse of a message nested at most Limits.maxJsonDepth deep; a SyntaxError otherwise, as for
 * any text that is not JSON (callers answer both alike).
 */
export function parseBoundedJson(text: string): unknown {
  if (!jsonDepthWithin(text, Limits.maxJsonDepth)) throw new SyntaxError(`JSON nested deeper than ${Limits.maxJsonDepth} levels`);
  return JSON.parse(text);
}

/**
 * The value of a top-level member of a JSON object text when it is a string or a number, read
 * without parsing the rest (which may nest too deep to parse): a refused message still echoes its
 * requestId. The last occurrence wins, as with JSON.parse; undefined when there is none.
 */
export function topLevelMember(text: string, name: string): string | number | undefined {
  let depth = 0;
  let expectKey = false;
  let found: string | number | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      const end = stringEnd(text, i);
      if (end < 0) return found;
      if (depth === 1 && expectKey) {
        expectKey = false;
        if (JSON.parse(text.slice(i, end + 1)) === name) {
          let j = end + 1;
          while (/\s/.test(text[j] ?? '')) j++;
          if (text[j] === ':') j++;
          while (/\s/.test(text[j] ?? '')) j++;
          if (text[j] === '"') {
            const valueEnd = stringEnd(text, j);
            if (valueEnd < 0) return found;
            found = JSON.parse(text.slice(j, valueEnd + 1)) as string;
          } else {
            const number = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(j, j + 32))?.[0];
            found = number === undefined ? undefined : Number(number);
          }
        }
      }
      i = end;
    } else if (c === '{' || c === '[') {
      depth++;
      if (depth === 1) expectKey = c === '{';
    } else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
  }
  return found;
}

/** The index of the quote that ends the JSON string starting at `start`; -1 when it does not end. */
function stringEnd(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i++) {
    if (text[i] === '\\') i++;
    else if (text[i] === '"') return i;
  }
  return -1;
}
