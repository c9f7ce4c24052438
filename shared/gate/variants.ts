import type { VariantName } from '../events/schemas.ts';

/** DESIGN §3 Variants: a variant is registered as a model of its own, `<name>-<variant>` (`heimdall-localization-int8`), with the same alias rules. */
export const variantModelName = (modelName: string, variant: VariantName) => `${modelName}-${variant}`;
