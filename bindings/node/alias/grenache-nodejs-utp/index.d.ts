export * from 'grenache-native/utp'
