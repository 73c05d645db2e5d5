/**
 * `@peculiar/x509` depends on tsyringe, which refuses to load unless `Reflect.getMetadata` exists
 * (normally supplied by the `reflect-metadata` package). tsyringe only needs three functions, so
 * rather than add a dependency we provide them here, backed by a WeakMap, when they are absent.
 * `certs/x509.ts` imports this module before the library; import X.509 through that file.
 */
type MetadataMap = Map<string | symbol | undefined, Map<unknown, unknown>>;

interface ReflectMetadataApi {
  defineMetadata?: (key: unknown, value: unknown, target: object, property?: string | symbol) => void;
  getOwnMetadata?: (key: unknown, target: object, property?: string | symbol) => unknown;
  getMetadata?: (key: unknown, target: object, property?: string | symbol) => unknown;
}

const api = Reflect as unknown as ReflectMetadataApi;

if (typeof api.getMetadata !== 'function') {
  const store = new WeakMap<object, MetadataMap>();
  const own = (target: object, property: string | symbol | undefined, create: boolean): Map<unknown, unknown> | undefined => {
    let byProperty = store.get(target);
    if (byProperty === undefined) {
      if (!create) return undefined;
      byProperty = new Map();
      store.set(target, byProperty);
    }
    let entries = byProperty.get(property);
    if (entries === undefined && create) {
      entries = new Map();
      byProperty.set(property, entries);
    }
    return entries;
  };
  api.defineMetadata = (key, value, target, property) => {
    own(target, property, true)?.set(key, value);
  };
  api.getOwnMetadata = (key, target, property) => own(target, property, false)?.get(key);
  api.getMetadata = (key, target, property) => {
    for (let current: object | null = target; current !== null; current = Object.getPrototypeOf(current) as object | null) {
      const entries = own(current, property, false);
      if (entries?.has(key)) return entries.get(key);
    }
    return undefined;
  };
}

export {};
