/** ZIP record signatures and fixed sizes (PKWARE APPNOTE.TXT §4.3), shared by the reader and the writer. */
export const LOCAL_SIGNATURE = 0x04034b50;
export const CENTRAL_SIGNATURE = 0x02014b50;
export const EOCD_SIGNATURE = 0x06054b50;
export const ZIP64_EOCD_SIGNATURE = 0x06064b50;
export const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
/** APPNOTE §4.5.3: the ZIP64 extended information extra field. */
export const ZIP64_EXTRA_ID = 0x0001;
export const LOCAL_HEADER_SIZE = 30;
export const CENTRAL_HEADER_SIZE = 46;
export const EOCD_SIZE = 22;
export const ZIP64_EOCD_SIZE = 56;
export const ZIP64_LOCATOR_SIZE = 20;
export const U32_MAX = 0xffffffff;
export const U16_MAX = 0xffff;
