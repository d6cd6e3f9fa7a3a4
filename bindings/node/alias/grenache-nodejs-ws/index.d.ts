export * from 'grenache-native/ws'
