/* Maps that outlive a daemon (appliance.edge.pins): pinned as
 * TP_PIN_DIR/<name>_v<version>. Whoever changes a map's key or value layout
 * bumps its version at its declaration, so a new build never reuses an old
 * map under a new layout: the loader migrates the old map field by field
 * into the new one, or refuses to start. Without TP_PIN_DIR (packet
 * fixtures, the fuzzer, the bench's cost runs) every map is the module's own. */
#ifndef TP_PIN_H
#define TP_PIN_H

#ifdef TP_PIN_DIR
#define TP_MAP(type, key, value, name, entries, version, flags) \
	BPF_TABLE_PINNED(type, key, value, name, entries, TP_PIN_DIR "/" #name "_v" #version, flags)
#else
#define TP_MAP(type, key, value, name, entries, version, flags) \
	BPF_F_TABLE(type, key, value, name, entries, flags)
#endif

#endif
